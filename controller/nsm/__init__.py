"""The NSM NetworkService and MonitorConnection server: a chain of small elements (see README.md)."""
