"""A 3-member etcd cluster on free loopback ports, its data in a temporary directory, for the
tests and benchmarks of the etcd store: started and stopped by them, with one member killed,
stopped (SIGSTOP) or continued on demand.

The members are tuned so that a 1 s lease is allowed: etcd raises every lease TTL to
3/2 × election-timeout (rounded up to whole seconds), so the election timeout must be at most
666 ms; 600 ms over a 100 ms heartbeat still rides out a loaded machine's scheduling gaps."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.fabric.store import StoreUnavailable

HEARTBEAT_MS = 100
ELECTION_MS = 600


def needs_etcd() -> None:
    """Skip the calling test when etcd is not installed."""
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.skip("etcd (Debian etcd-server, etcd-client) is not on PATH")


def free_ports(n: int) -> list[int]:
    """n ports the kernel just handed out (held together, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass
class EtcdCluster:
    root: Path
    members: list[Member] = field(default_factory=list)

    @classmethod
    def make(cls, root: Path, size: int = 3) -> EtcdCluster:
        ports = free_ports(2 * size)
        cluster = cls(root)
        for i in range(size):
            cluster.members.append(Member(f"m{i}", ports[2 * i], ports[2 * i + 1], root / f"m{i}", root / f"m{i}.log"))
        return cluster

    @property
    def url(self) -> str:
        """The `store` setting that names every member."""
        return "etcd://" + ",".join(f"127.0.0.1:{m.client_port}" for m in self.members)

    @property
    def endpoints(self) -> str:
        return ",".join(m.client_url for m in self.members)

    def _argv(self, m: Member) -> list[str]:
        initial = ",".join(f"{o.name}={o.peer_url}" for o in self.members)
        return [
            "etcd", "--name", m.name, "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", initial, "--initial-cluster-state", "new", "--initial-cluster-token", self.root.name,
            "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS),
            # the store's channel pings every second, so that a stopped member is left quickly
            "--grpc-keepalive-min-time", "500ms",
            "--logger", "zap", "--log-level", "warn",
        ]

    def start_member(self, m: Member) -> None:
        log = m.log_path.open("ab")
        m.process = subprocess.Popen(self._argv(m), stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def start(self, timeout: float = 20.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for m in self.members:
            self.start_member(m)
        self.wait_healthy(self.members, timeout)

    def etcdctl(self, *args: str, members: list[Member] | None = None, timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
        endpoints = ",".join(m.client_url for m in (members or self.members))
        return subprocess.run(["etcdctl", "--endpoints", endpoints, "--command-timeout", f"{timeout}s", *args],
                              capture_output=True, text=True, timeout=timeout + 5, env={"ETCDCTL_API": "3"})

    def healthy(self, members: list[Member]) -> bool:
        out = self.etcdctl("endpoint", "health", members=members, timeout=1.0)
        return out.returncode == 0

    def wait_healthy(self, members: list[Member], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy(members):
            for m in members:
                if m.process is not None and m.process.poll() is not None:
                    raise RuntimeError(f"etcd member {m.name} exited {m.process.returncode}: {m.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd members {[m.name for m in members]} not healthy within {timeout} s")
            time.sleep(0.05)

    def kill(self, m: Member) -> None:
        assert m.process is not None
        m.process.kill()
        m.process.wait()
        m.process = None

    def restart(self, m: Member) -> None:
        """Start a killed member again on its data (it rejoins as the member it was)."""
        argv = self._argv(m)
        argv[argv.index("new")] = "existing"
        log = m.log_path.open("ab")
        m.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def raft_leader(self) -> Member:
        """The member etcd's raft has elected leader (as the members themselves report it)."""
        out = self.etcdctl("endpoint", "status", "-w", "json", members=[m for m in self.members if m.process is not None])
        assert out.returncode == 0, out.stderr
        statuses = json.loads(out.stdout)
        by_id = {st["Status"]["header"]["member_id"]: st["Endpoint"] for st in statuses}
        endpoint = by_id[statuses[0]["Status"]["leader"]]
        return next(m for m in self.members if m.client_url == endpoint)

    def lose_quorum(self) -> list[Member]:
        """Kill all members but the first; returns them for regain_quorum."""
        lost = self.members[1:]
        for m in lost:
            self.kill(m)
        return lost

    def regain_quorum(self, lost: list[Member]) -> None:
        for m in lost:
            self.restart(m)
        self.wait_healthy(self.members)

    def stop(self, m: Member) -> None:
        """SIGSTOP: the member keeps its sockets and answers nothing."""
        assert m.process is not None
        m.process.send_signal(signal.SIGSTOP)

    def cont(self, m: Member) -> None:
        assert m.process is not None
        m.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        for m in self.members:
            if m.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    m.process.send_signal(signal.SIGCONT)
                m.process.kill()
                m.process.wait()
                m.process = None


    def get(self, key: str, prefix: bool = False) -> dict[str, str]:
        """What etcd itself holds (read by etcdctl, not by the code under test): key -> value."""
        out = self.etcdctl("get", key, *(["--prefix"] if prefix else []), "-w", "json")
        assert out.returncode == 0, out.stderr
        kvs = json.loads(out.stdout).get("kvs", [])
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode() for kv in kvs}


def running_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """The body of a test module's cluster fixture: skips without etcd; stops every member after."""
    needs_etcd()
    cluster = EtcdCluster.make(tmp_path / "etcd")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


async def until_stored(write: Callable[[], Awaitable[object]], timeout: float = 15.0) -> None:
    """Run `write` (which ends in durable()) until the store takes it: after a quorum came back,
    the writer's lease and term may need a moment."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await write()
            return
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)
