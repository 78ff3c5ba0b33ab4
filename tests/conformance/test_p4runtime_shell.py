"""Conformance from an independent client: p4runtime-shell (its own venv, protobuf<3.21)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from finsy.proto import p4r

from tests.support.fixtures import SoftSwitchProcess
from tests.support.p4rt import (
    DEFAULT_P4INFO,
    DEFAULT_SOFTSWITCH_CONFIG,
    REPO,
    P4RTTestClient,
)

SHELL_PYTHON = REPO / ".venv-p4rtshell" / "bin" / "python"
SESSION = Path(__file__).parent / "data" / "p4rtsh_session.py"


def shell_available() -> str | None:
    if not SHELL_PYTHON.exists():
        return f"{SHELL_PYTHON} is missing (.ci/bootstrap creates it)"
    probe = subprocess.run([str(SHELL_PYTHON), "-c", "import p4runtime_sh.shell"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"p4runtime-shell does not import in {SHELL_PYTHON.parent.parent}: {probe.stderr.strip()[-300:]}"
    return None


def decode(hexes: list[str]) -> list[p4r.TableEntry]:
    return [p4r.TableEntry.FromString(bytes.fromhex(h)) for h in hexes]


def summary(entry: p4r.TableEntry) -> tuple[int, int, int]:
    """(ingress_port, vlan_id, label) of an edge_classify entry."""
    port, vlan = (int.from_bytes(m.exact.value, "big") for m in entry.match)
    return port, vlan, int.from_bytes(entry.action.action.params[0].value, "big")


def test_p4runtime_shell_session(softswitch: SoftSwitchProcess) -> None:
    missing = shell_available()
    if missing:
        pytest.skip(missing)
    run = subprocess.run(
        [str(SHELL_PYTHON), str(SESSION), softswitch.address, str(DEFAULT_P4INFO), str(DEFAULT_SOFTSWITCH_CONFIG)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}\nswitch log:\n{softswitch.log()}"
    steps = {}
    for line in run.stdout.splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            steps[doc["step"]] = doc

    inserted = decode(steps["inserted"]["entries"])
    assert [summary(e) for e in inserted] == [(5, 100, 1000)]
    # Read-write symmetry: whatever padding the shell sent, values come back canonical.
    assert all(len(m.exact.value) == 1 for m in inserted[0].match)
    assert "ALREADY_EXISTS" in steps["duplicate"]["error"]
    assert [summary(e) for e in decode(steps["modified"]["entries"])] == [(5, 100, 2000)]
    default = decode(steps["default"]["entries"])
    assert len(default) == 1 and default[0].is_default_action
    assert steps["deleted"]["entries"] == []
    assert [summary(e) for e in decode(steps["left"]["entries"])] == [(5, 200, 3000)]

    # The shell's session is gone; our own client sees the same state.
    with P4RTTestClient(softswitch.address, election_id=2) as client:
        assert client.is_primary
        assert [summary(e) for e in client.read_table("edge_classify")] == [(5, 200, 3000)]
        config = client.get_pipeline(p4r.GetForwardingPipelineConfigRequest.ALL)
        assert not config.HasField("cookie")  # the shell commits without a cookie
        assert b'"nsm_fabric"' in config.p4_device_config
