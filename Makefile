# The two commands a fresh machine needs: `make demo` (the lab demo) and `make test`.
# Both install what they need first (.ci/bootstrap is idempotent).
PY := .venv/bin/python
TOPO ?= topologies/diamond.yaml

.PHONY: setup demo test lab bench clean
setup:
	@bash .ci/bootstrap

demo: setup
	.venv/bin/p4nsm demo

test: setup
	$(PY) -m pytest -q -rs

lab: setup
	.venv/bin/p4nsm lab $(TOPO)

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	.venv/bin/python -c "from topologies.lab import cleanup_stale; cleanup_stale()" || true
