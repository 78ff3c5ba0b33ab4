"""The switch kinds an e2e suite runs on: p4nsm's softswitch and real BMv2 (simple_switch_grpc).

A module-scoped lab fixture takes `params=SWITCH_KINDS` and builds its topology with
`on_kind(topo, kind)`; the controller then loads `controller_overrides(kind, run_dir)`, which for
BMv2 is p4c's own build of p4/nsm_fabric.p4 (its JSON, and its P4Info with p4c's ids: the
controller resolves everything by name). Tests whose subject is a softswitch feature stay on the
softswitch and say why.
"""

from __future__ import annotations

import os
import shutil

import pytest

from controller.topology import Target, Topology
from lab.p4c import controller_overrides, with_switch_kind

__all__ = ["BMV2", "SOFTSWITCH", "SWITCH_KINDS", "controller_overrides", "on_kind", "require"]

BMV2_MISSING = [t for t in ("simple_switch_grpc", "p4c") if shutil.which(t) is None]
# CI sets this where it installed BMv2 (.ci/run): there a missing BMv2 fails instead of skipping.
BMV2_REQUIRED = os.environ.get("P4NSM_REQUIRE_BMV2") == "1"
needs_bmv2 = pytest.mark.skipif(bool(BMV2_MISSING) and not BMV2_REQUIRED,
                                reason=f"BMv2 runs need {' and '.join(BMV2_MISSING)} on PATH")

SOFTSWITCH = Target.SOFTSWITCH.value
BMV2 = Target.BMV2.value
SWITCH_KINDS = [pytest.param(SOFTSWITCH, id=SOFTSWITCH),
                pytest.param(BMV2, id=BMV2, marks=[needs_bmv2, pytest.mark.bmv2])]


def on_kind(topo: Topology, kind: str) -> Topology:
    """The topology with every switch of `kind` (see lab.p4c.with_switch_kind)."""
    return with_switch_kind(topo, kind)


def require(kind: str) -> None:
    """Skip unless switches of `kind` can run here."""
    from tests.e2e.lab_fixtures import require_root, softswitch_or_skip

    if kind == SOFTSWITCH:
        softswitch_or_skip()
    else:
        require_root()
        if BMV2_MISSING:
            why = f"BMv2 runs need {' and '.join(BMV2_MISSING)} on PATH"
            if BMV2_REQUIRED:
                pytest.fail(f"{why} (P4NSM_REQUIRE_BMV2=1: CI installed it)")
            pytest.skip(why)
