"""Pieces of the heal benchmark (benchmarks/bench_heal.py): traffic processes that run inside the
lab's host namespaces, the failures and how the fabric settles after them, and the analysis,
tables and figures of the results."""
