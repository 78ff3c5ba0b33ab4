"""Liveness of switches and links, and what to do when they fail: reroute, eject."""
