"""Topology graph, paths, labels, and the translation of connections into switch entries."""
