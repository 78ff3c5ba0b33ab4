"""The NetworkService chain: its protocol (chain.py) and every element, each with one job."""
