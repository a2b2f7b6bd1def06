"""Edged: runs the node's pods through a container runtime, and reports their status."""
