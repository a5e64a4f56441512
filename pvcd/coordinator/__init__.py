"""The primary coordinator: election, takeover and relinquish, primary-only services.

- `claims`: the ZooKeeper records of the election, read and written as values (pure).
- `decide`: what a coordinator does next, from one observation and the time (pure).
- `election`: the ZooKeeper adapter: observe, claim, release (kazoo, bounded calls).
- `services`: the registry of services that run only on the primary.
- `role`: the thread a coordinator's daemon runs, tying the others together.

docs/coordinators.md explains the design and why it cannot produce two primaries.
"""
