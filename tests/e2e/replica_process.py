"""`p4nsm run` replica processes of one fabric on etcd, on a diamond moved to free switch ports:
what tests/e2e/test_replicas_failover.py and benchmarks/bench_failover.py start and watch."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from controller.admin import call
from controller.settings import REPO_ROOT
from controller.topology import Topology, parse_topology
from tests.support.fixtures import free_port

P4NSM = str(Path(sys.executable).with_name("p4nsm"))
# the replicas' settings beyond the lab's certificates: the NSM suites' keepalive (a switch
# starved a moment on a loaded machine is not down), quick SDK retries, the etcd lease at 1 s
REPLICA_SETTINGS = {"keepalive_timeout": "1.0", "probe_keepalive_proof_delay": "1.0", "nsm_endpoint_timeout": "2.0",
                    "nsm_retry_interval": "0.1", "store_lease_ttl": "1", "metrics_address": "127.0.0.1:0",
                    "web_address": "127.0.0.1:0"}


def free_port_diamond() -> Topology:
    """The diamond with P4Runtime ports of its own: never the default 50001-50004."""
    text = (REPO_ROOT / "topologies" / "diamond.yaml").read_text()
    text = re.sub(r"127\.0\.0\.1:5000\d", lambda _m: f"127.0.0.1:{free_port()}", text)
    return parse_topology(text.replace("name: diamond", "name: replicas"))


class Replica:
    """One `p4nsm run` process of the fabric."""

    def __init__(self, name: str, run_dir: Path, topo_file: Path, settings: dict[str, str]) -> None:
        self.name = name
        self.nsm = f"unix://{run_dir / f'{name}.sock'}"
        self.admin = run_dir / f"admin-{name}.sock"
        self.log_path = run_dir / f"{name}.log"
        sets = [arg for k, v in {**settings, "store_replica_id": name, "nsm_run_dir": str(run_dir / f"nsm-{name}"),
                                 "store_path": str(run_dir / f"{name}.sqlite")}.items() for arg in ("--set", f"{k}={v}")]
        self.argv = [P4NSM, "run", "-t", str(topo_file), "--nsm-address", self.nsm, "--admin-socket", str(self.admin), *sets]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def status(self) -> dict[str, Any] | None:
        try:
            return await call(self.admin, "replica")  # type: ignore[no-any-return]
        except (RuntimeError, OSError, ValueError):
            return None

    async def connections(self) -> list[dict[str, Any]]:
        return await call(self.admin, "connections")  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()



def leading(status: dict[str, Any] | None) -> bool:
    """The replica leads and is every switch's primary, with the switch up."""
    return bool(status) and status["role"] == "leader" and all(
        sw["primary"] and sw["up"] and sw["primary_election_id"] == status["election_id"] for sw in status["switches"])


def following(status: dict[str, Any] | None, leader_id: int) -> bool:
    return bool(status) and status["role"] == "follower" and all(
        sw["primary_election_id"] == leader_id and not sw["primary"] for sw in status["switches"])
