"""The cluster as every loop and the CLI read it: value types, the snapshot, the watched cache.

`values` and `view` are pure and import neither libvirt, kazoo nor YAML (a
test holds them to it), so that decisions, the simulator and the CLI can use
them without a hypervisor or a coordination store.
"""
