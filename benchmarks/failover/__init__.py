"""Pieces of the failover benchmark (benchmarks/bench_failover.py): the lab with etcd and replicas,
the connections and their streams, the rows of trials and the chaos run."""
