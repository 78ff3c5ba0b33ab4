"""benchmarks/bench_p4rt_write_peers.py's own checks, on each switch kind it writes to (the
softswitch, real BMv2): every peer's entries are read back and counted after its run, and a run
that writes nothing fails the benchmark. Tiny sizes: the figures come from the benchmark itself.

BMv2 here is the benchmark's own simple_switch_grpc on loopback (no interfaces, no namespaces)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from controller.p4rt.schema import P4Schema
from tests.e2e.switch_kinds import SWITCH_KINDS, require
from tests.support.p4rt import REPO

BENCH = REPO / "benchmarks" / "bench_p4rt_write_peers.py"
COUNT = 12


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_p4rt_write_peers", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """p4c builds the BMv2 program once for the module (the softswitch uses p4/ as it is)."""
    return tmp_path_factory.mktemp("p4c")


def _variant(kind: str, build_dir: Path, peer: str, count: int, mode: str = "") -> tuple[Any, P4Schema]:
    """The benchmark's first variant of `peer` (with `mode` among its arguments), and its schema."""
    pipe = bench.pipeline(kind, build_dir)
    found = [v for v in bench.variants(count, True, pipe) if v.peer == peer and (not mode or mode in v.argv)]
    return found[0], P4Schema.from_file(pipe.p4info)


@pytest.mark.parametrize("kind", SWITCH_KINDS)
@pytest.mark.parametrize(("peer", "mode"), [("p4nsm", ""), ("finsy", "--concurrent"), ("p4runtime-shell", "write-file")])
def test_each_peers_entries_are_read_back_and_counted(kind: str, peer: str, mode: str, build_dir: Path) -> None:
    require(kind)
    if peer == "p4runtime-shell" and not bench.SHELL_VENV.exists():
        pytest.skip(f"{bench.SHELL_VENV} is missing (.ci/bootstrap makes it)")
    variant, schema = _variant(kind, build_dir, peer, COUNT, mode)
    seconds = bench.run_once(variant, schema, COUNT, kind)
    assert seconds > 0
    assert variant.entries == COUNT


@pytest.mark.parametrize("kind", SWITCH_KINDS)
def test_a_run_that_writes_nothing_fails_the_benchmark(kind: str, build_dir: Path) -> None:
    require(kind)
    writes_nothing, schema = _variant(kind, build_dir, "p4nsm", 0)
    with pytest.raises(SystemExit, match=rf"read back 0 entries, expected {COUNT} \(missing {COUNT},"):
        bench.run_once(writes_nothing, schema, COUNT, kind)


def test_a_count_beyond_the_table_is_refused_before_any_switch_starts() -> None:
    schema = P4Schema.from_file(bench.P4INFO)
    size = schema.table("label_fwd").size
    bench.check_count(size, schema)
    for count in (0, size + 1):
        with pytest.raises(SystemExit, match=f"--count {count}: label_fwd holds 1 to {size:,} entries"):
            bench.check_count(count, schema)
