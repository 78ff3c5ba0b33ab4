"""`p4nsm run` as a real subprocess, as a user starts it: for the restart tests, which kill the
controller (SIGKILL, SIGTERM) and start it again on the same store.

    from tests.e2e.controller_process import ControllerProcess, on_free_ports, write_topology

    topo = on_free_ports(load_topology(DIAMOND))          # never the default ports 50001-50004
    with Lab(topo, run_dir) as lab:                        # the lab on the same free ports
        ctl = ControllerProcess(write_topology(lab.topology, run_dir / "topo.yaml"), run_dir,
                                sets=lab_settings(certs_dir, "controller"))
        await ctl.start()                                  # every switch reconciled, NSM listening
        await ctl.kill(signal.SIGKILL); await ctl.start()  # same store, same NSM socket
        ctl.reconciled  # {switch: (inserted, modified, deleted)} of the last start

Ready is what the controller logs, not a delay: `event=nsm_listening` and one
`switch=<name> event=reconciled` per switch of the topology (a reconcile is a diff of what the
switch holds against the store: its counts are the entity writes of that start). Each start's
log (stderr) is kept in `<run_dir>/controller-<n>.log`; `lines` holds the last start's.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from controller.topology import Topology, load_topology
from tests.support.fixtures import free_port

P4NSM = Path(sys.executable).with_name("p4nsm")
READY_TIMEOUT_S = 120.0  # a lab's switches on a loaded 2-core machine take a while to answer
EXIT_TIMEOUT_S = 60.0
POLL_S = 0.05
RECONCILED = re.compile(r"switch=(\S+) event=reconciled inserted=(\d+) modified=(\d+) deleted=(\d+)")
METRICS_URL = re.compile(r"server=metrics event=listening url=(\S+)")


def on_free_ports(topo: Topology) -> Topology:
    """`topo` with every switch's gRPC address on a free loopback port: the default ports
    (50001-50004 in topologies/) belong to whoever else runs a lab on this machine."""
    switches = [s.model_copy(update={"grpc_addr": f"127.0.0.1:{free_port()}"}).model_dump() for s in topo.switches]
    return Topology.model_validate({**topo.model_dump(), "switches": switches})


def write_topology(topo: Topology, path: Path) -> Path:
    """`topo` as a YAML file `p4nsm run -t` loads back to the same topology."""
    path.write_text(yaml.safe_dump(topo.model_dump(mode="json", exclude_none=True), sort_keys=False))
    assert load_topology(path) == topo
    return path


class ControllerProcess:
    """One controller (`p4nsm run`) over a topology file and a store in `run_dir`, started and
    stopped as often as a test likes; every start uses the same store and NSM address."""

    def __init__(self, topology: Path, run_dir: Path, *, sets: Mapping[str, object] | None = None,
                 env: Mapping[str, str] | None = None, nsm_address: str | None = None) -> None:
        self.topology_path = topology
        self.switches = {s.name for s in load_topology(topology).switches}
        self.run_dir = run_dir
        self.store_path = run_dir / "store.sqlite"
        self.nsm_address = nsm_address or f"unix://{run_dir / 'nsm.sock'}"
        self.sets: dict[str, str] = {"store_path": str(self.store_path), "metrics_address": "127.0.0.1:0",
                                     "web_address": "127.0.0.1:0", **{k: str(v) for k, v in (sets or {}).items()}}
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = run_dir / "controller-0.log"
        self._offset = 0
        self.starts = 0
        self.lines: list[str] = []
        self.reconciled: dict[str, tuple[int, int, int]] = {}
        self.metrics_url = ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def argv(self) -> list[str]:
        sets = [arg for name, value in self.sets.items() for arg in ("--set", f"{name}={value}")]
        return [str(P4NSM), "run", "-t", str(self.topology_path), "--nsm-address", self.nsm_address, *sets]

    async def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Start `p4nsm run` and return once it serves NSM and has reconciled every switch."""
        assert self.pid is None, "already running"
        self.starts += 1
        self.lines, self.reconciled, self.metrics_url = [], {}, ""
        self.log_path = self.run_dir / f"controller-{self.starts}.log"
        # The log goes to a file, not a pipe: a pipe stays open as long as any process the
        # controller started holds it, and a test must see the controller's own exit.
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                         env=self.env, cwd=self.run_dir)
        self._offset = 0
        await self.wait_for(lambda: bool(self.logged("event=nsm_listening")) and set(self.reconciled) >= self.switches,
                            timeout, "ready")

    async def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Until `condition()` holds over what the log says (read again every POLL_S); fails
        naming `what` on timeout or when the process exits first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._read_log()
            if condition():
                return
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"controller exited before {what}: rc={self.proc and self.proc.returncode}\n"
                                     + "".join(self.lines[-30:]))
            if loop.time() > deadline:
                raise AssertionError(f"controller not {what} within {timeout}s; last lines:\n" + "".join(self.lines[-30:]))
            await asyncio.sleep(POLL_S)

    def logged(self, needle: str) -> list[str]:
        self._read_log()
        return [line for line in self.lines if needle in line]

    def _read_log(self) -> None:
        with self.log_path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        complete = chunk.rfind(b"\n") + 1  # a line still being written is read next time
        self._offset += complete
        for line in chunk[:complete].decode(errors="replace").splitlines(keepends=True):
            self.lines.append(line)
            if m := RECONCILED.search(line):
                self.reconciled[m[1]] = (int(m[2]), int(m[3]), int(m[4]))
            elif m := METRICS_URL.search(line):
                self.metrics_url = f"{m[1]}/metrics"

    async def kill(self, sig: int = signal.SIGKILL, timeout: float = EXIT_TIMEOUT_S) -> int:
        """Send `sig` and wait until the process is gone; its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.proc.poll() is None:
            if loop.time() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"controller did not exit within {timeout}s of signal {sig}")
            await asyncio.sleep(POLL_S)
        self._read_log()
        return self.proc.returncode

    async def stop(self) -> None:
        """SIGTERM (an orderly stop), SIGKILL if that does not end it; idempotent."""
        if self.pid is not None:
            try:
                await self.kill(signal.SIGTERM, 30)
            except AssertionError:
                pass
