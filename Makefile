# The two commands a fresh machine needs: `make demo` (the lab demo) and `make test`.
# Both install what they need first (.ci/bootstrap is idempotent).
PY := .venv/bin/python
TOPO ?= topologies/diamond.yaml

.PHONY: setup demo test lint lab bench clean
setup:
	@bash .ci/bootstrap

demo: setup
	.venv/bin/p4nsm demo

test: setup
	$(PY) -m pytest -q -rs

# ruff (lint and import order) and mypy, as configured in pyproject.toml; CI runs it first.
lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy

lab: setup
	.venv/bin/p4nsm lab $(TOPO)

# Every benchmark once, smaller than the published runs (each file's docstring gives those). The
# lab benchmarks (root) run in their smallest form and write nothing: their figures would not be
# comparable. The two P4Runtime write benchmarks have no such mode, so they run at their standard
# sizes (the peers one without p4runtime-shell's one-Write-per-entry variant) and rewrite their
# benchmarks/results/*.md.
bench: setup
	$(PY) benchmarks/bench_softswitch_write.py
	$(PY) benchmarks/bench_p4rt_write_peers.py --quick
	$(PY) benchmarks/bench_softswitch_forward.py --seconds 1 --rates 10000,0 --no-write
	$(PY) benchmarks/bench_controller_setup.py --topologies diamond --connections 100 --concurrency 20 --no-write
	$(PY) benchmarks/bench_nsm_requests.py --requests 100 --clients 10 --liveness default --no-write
	$(PY) benchmarks/bench_heal.py --quick

clean:
	.venv/bin/python -c "from lab.harness import cleanup_stale; cleanup_stale()" || true
