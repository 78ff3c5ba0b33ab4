"""Endpoint selection: which registered endpoints may serve a Request (discover), which one is
tried next (roundrobin), and which are left out for a while for failing (outlier)."""
