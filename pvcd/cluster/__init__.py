"""The cluster as every loop and the CLI read it: value types, the snapshot, the watched cache.

`values`, `vm_records`, `view` and `liveness` are pure and import neither
libvirt, kazoo nor YAML (a test holds them to it), so that decisions, the
simulator and the CLI can use them without a hypervisor or a coordination
store; `cache` and `states` are the adapters that keep them up to date.
`client_networks` (client networks, DHCP reservations and leases, and the
rewrite of VM interfaces to network bridges) is pure too and imports only the
standard library.
"""
