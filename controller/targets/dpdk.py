"""P4-DPDK's device config: Stratum's TDI BfPipelineConfig from p4c-dpdk's output directory.

infrap4d takes the same message as Stratum on Tofino (bf_pipeline.py) with the pipeline's `.spec`
text as the profile's binary, and only a pipeline named `pipe`. The directory is what
`p4c-dpdk --arch pna --bf-rt-schema OUT/bf-rt.json --context OUT/pipe/context.json
-o OUT/pipe/PROG.spec` writes; the program's name is the .spec's.
"""

from __future__ import annotations

from pathlib import Path

from controller.targets import build_files
from controller.targets.bf_pipeline import Pipeline, pack
from controller.targets.errors import TargetError

PIPELINE = "pipe"  # infrap4d accepts no other name
_WHAT = "p4c-dpdk's output directory (bf-rt.json, pipe/context.json, pipe/<program>.spec)"
_HINT = "compile p4/nsm_fabric_pna.p4 with p4c-dpdk: make -C p4 dpdk"


def from_directory(out_dir: Path) -> bytes:
    build_files.directory(out_dir, _WHAT)
    pipe = out_dir / PIPELINE
    specs = sorted(pipe.glob("*.spec")) if pipe.is_dir() else []
    if len(specs) > 1:
        raise TargetError(f"{pipe} holds more than one .spec ({', '.join(s.name for s in specs)}): keep the one program's")
    spec = specs[0] if specs else pipe / "<program>.spec"
    build_files.require([out_dir / "bf-rt.json", pipe / "context.json", spec], _HINT)
    bfrt = build_files.json_with(out_dir / "bf-rt.json", "tables", "a BfRt schema (bf-rt.json)")
    context = build_files.json_with(pipe / "context.json", "tables", "a p4c-dpdk context.json")
    text = build_files.not_json(spec, "a P4-DPDK .spec")
    if b"apply" not in text:
        raise TargetError(f"{spec} has no apply block: it is not a P4-DPDK .spec")
    return pack(spec.stem, bfrt, [Pipeline(PIPELINE, context, text)])
