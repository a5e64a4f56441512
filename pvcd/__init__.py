"""pvcd: the node daemon of a KVM/libvirt cluster coordinated through ZooKeeper."""

__version__ = "0.1.0"
