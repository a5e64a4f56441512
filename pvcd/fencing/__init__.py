"""Fencing: dead-node detection, IPMI power control, and what a fence outcome allows."""
