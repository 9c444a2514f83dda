"""Devices: what the planner knows of the GPUs, hosts and links, read once into snapshots."""
