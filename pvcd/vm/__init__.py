"""VMs on libvirt: records in ZooKeeper, the per-node reconciler, migration, flush.

See docs/vms.md. Pure decisions live in `records`, `reconcile`, `placement`
and the decision half of `flush`; `domains`, `migration`, `reconciler` and the
runner half of `flush` are the adapters that carry them out.
"""
