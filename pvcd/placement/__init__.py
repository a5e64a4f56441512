"""Placement: which node takes which VM (pure).

`selectors` ranks nodes for one VM, `planner` places a whole batch at once,
`cluster` turns the cluster's records into the planner's node figures.
See docs/placement.md.
"""
