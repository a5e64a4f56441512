"""VMs on libvirt: the per-node reconciler, migration, flush.

See docs/vms.md. The VM values and the rules of commands and moves live in
`pvcd.cluster.vm_records`, placement in `pvcd.placement`; pure decisions here
are `reconcile` and the decision half of `flush`; `domains`, `migrators`,
`reconciler` and the runner half of `flush` are the adapters that carry them out.
"""
