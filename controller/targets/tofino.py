"""Tofino's device config: Stratum's BfPipelineConfig from bf-p4c's output.

Two ways to name that output: bf-p4c's `.conf` (the one file it writes that lists the program's
name, its bfrt.json and each pipeline's context.json, binary and pipe scope, paths relative to
the .conf), or the output directory laid out as bf-p4c writes it for one pipeline `pipe`
(bfrt.json, pipe/context.json, pipe/tofino.bin or pipe/tofino2.bin).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from controller.targets import build_files
from controller.targets.bf_pipeline import ALL_PIPES, Pipeline, pack
from controller.targets.errors import TargetError

P4_NAME = "nsm_fabric_tna"
PIPELINE = "pipe"
_HINT = "compile p4/nsm_fabric_tna.p4 with bf-p4c: make -C p4 tofino"
_BINARIES = ("tofino.bin", "tofino2.bin")  # Tofino 1, Tofino 2


def _pipeline(name: str, context: Path, binary: Path, pipe_scope: tuple[int, ...] = ALL_PIPES) -> Pipeline:
    build_files.require([context, binary], _HINT)
    return Pipeline(name, build_files.json_with(context, "tables", "a bf-p4c context.json"),
                    build_files.not_json(binary, "a Tofino binary (tofino.bin)"), pipe_scope)


def from_directory(out_dir: Path) -> bytes:
    """Pack bf-p4c's output directory: bfrt.json and the one pipeline `pipe`."""
    build_files.directory(out_dir, "bf-p4c's output directory (bfrt.json, pipe/context.json, pipe/tofino.bin)")
    pipe = out_dir / PIPELINE
    binary = next((pipe / b for b in _BINARIES if (pipe / b).is_file()), pipe / _BINARIES[0])
    build_files.require([out_dir / "bfrt.json"], _HINT)
    bfrt = build_files.json_with(out_dir / "bfrt.json", "tables", "a BfRt schema (bfrt.json)")
    return pack(P4_NAME, bfrt, [_pipeline(PIPELINE, pipe / "context.json", binary)])


_PROGRAM = ("p4_devices", 0, "p4_programs", 0)  # where the .conf lists the one program


def _at(doc: Any, conf: Path, *path: str | int) -> Any:
    """The value at `path` in the .conf; a TargetError naming the .conf and the path if absent."""
    node, where = doc, ""
    for key in path:
        where += f"[{key}]" if isinstance(key, int) else (f".{key}" if where else key)
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            raise TargetError(f"{conf}: {where} is missing (not a bf-p4c .conf?)") from None
    return node


def from_conf(conf: Path) -> bytes:
    """Pack what bf-p4c's .conf lists: p4_devices[0].p4_programs[0] with its pipelines (one
    program on one device, as Stratum's own bf_pipeline_builder takes it)."""
    build_files.require([conf], _HINT)
    try:
        doc = json.loads(conf.read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise TargetError(f"{conf} is not JSON: it should be bf-p4c's .conf") from None
    base = conf.parent  # an absolute path in the .conf stays as it is
    bfrt_path = base / _at(doc, conf, *_PROGRAM, "bfrt-config")
    build_files.require([bfrt_path], f"listed in {conf}")
    listed = _at(doc, conf, *_PROGRAM, "p4_pipelines")
    if not listed:
        raise TargetError(f"{conf}: p4_devices[0].p4_programs[0].p4_pipelines is empty")
    pipelines = []
    for i in range(len(listed)):
        here = (*_PROGRAM, "p4_pipelines", i)
        context, binary = (base / _at(doc, conf, *here, key) for key in ("context", "config"))
        build_files.require([context, binary], f"listed in {conf}")
        scope = tuple(int(x) for x in listed[i].get("pipe_scope", ())) or ALL_PIPES
        pipelines.append(_pipeline(str(_at(doc, conf, *here, "p4_pipeline_name")), context, binary, scope))
    bfrt = build_files.json_with(bfrt_path, "tables", "a BfRt schema (bfrt.json)")
    return pack(str(_at(doc, conf, *_PROGRAM, "program-name")), bfrt, pipelines)
