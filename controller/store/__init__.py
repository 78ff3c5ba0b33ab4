"""Desired state (connections, their paths and labels, pipeline revision) kept across restarts."""
