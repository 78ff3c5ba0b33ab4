"""What a lab has created, kept on disk while it runs, so that a later run can remove what a
crashed one left behind (netns names, root-netns interfaces, switch and host processes), and a
lock so that two labs on one machine do not fight over the same names."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger("p4nsm.lab")

STATE_DIR = Path("/run/p4nsm-lab")
LOCK_PATH = STATE_DIR / "lab.lock"
LOCK_POLL_S = 0.2


@dataclass(frozen=True)
class ProcessRecord:
    """A process, told apart from a later one that reuses its pid by its start time."""

    role: str
    pid: int
    start_time: int

    @classmethod
    def of(cls, role: str, pid: int) -> ProcessRecord:
        start = process_start_time(pid)
        if start is None:
            raise ProcessLookupError(f"{role}: process {pid} is not running")
        return cls(role, pid, start)

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time


def process_start_time(pid: int) -> int | None:
    """Start time (clock ticks after boot) of a running process; None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass
class Manifest:
    topology: str
    run_dir: str
    owner: ProcessRecord
    netns: list[str]
    ifaces: list[str]
    processes: list[ProcessRecord] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return STATE_DIR / f"{self.topology}-{self.owner.pid}.json"

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(self.path)

    def add_process(self, role: str, pid: int) -> None:
        kept = [p for p in self.processes if p.role != role]
        with suppress(ProcessLookupError):  # already dead: nothing of it to clean up
            kept.append(ProcessRecord.of(role, pid))
        self.processes = kept
        self.save()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        data = json.loads(path.read_text())
        return cls(
            topology=data["topology"], run_dir=data["run_dir"], owner=ProcessRecord(**data["owner"]),
            netns=list(data["netns"]), ifaces=list(data["ifaces"]),
            processes=[ProcessRecord(**p) for p in data["processes"]],
        )


def release(manifest: Manifest) -> list[str]:
    """Kill the manifest's processes, remove its netns names and its root-netns interfaces;
    returns what was still there."""
    removed: list[str] = []
    for proc in manifest.processes:
        if proc.alive():
            _kill_group(proc.pid)
            removed.append(f"process {proc.role} pid={proc.pid}")
    existing = set(netns.listnetns())
    for name in manifest.netns:
        if name in existing:
            netns.remove(name)
            removed.append(f"netns {name}")
    with IPRoute() as ipr:
        for ifname in manifest.ifaces:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                continue
            try:
                ipr.link("del", index=found[0])
                removed.append(f"iface {ifname}")
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:  # its veth peer's deletion took it along
                    raise
    return removed


def cleanup_stale(prefix: str = "") -> list[str]:
    """Remove what labs whose process has died left behind (only those whose topology name
    starts with `prefix`); a lab that is still running is left alone. Returns what was removed."""
    removed: list[str] = []
    for path in sorted(STATE_DIR.glob("*.json")):
        try:
            manifest = Manifest.load(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable lab state ignored path=%s error=%s", path, exc)
            continue
        if not manifest.topology.startswith(prefix) or manifest.owner.alive():
            continue
        found = release(manifest)
        manifest.discard()
        log.info("stale lab cleaned topology=%s owner_pid=%d run_dir=%s removed=%s",
                 manifest.topology, manifest.owner.pid, manifest.run_dir, ", ".join(found) or "nothing")
        removed += found
    return removed


def _kill_group(pid: int) -> None:
    # Switches and Mininet's host shells each lead their own session, so the group is theirs alone.
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # not a group leader after all
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while process_start_time(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.02)


class LabLock:
    """One lab at a time per machine: the names (h1, s1-eth1, ...) are global to it."""

    def __init__(self) -> None:
        self._fd: int | None = None

    def acquire(self, timeout: float, who: str) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise TimeoutError(f"another lab is running ({holder}); waited {timeout:.0f}s for {LOCK_PATH}") from None
                if not waited:
                    log.info("waiting for another lab to stop holder=%s", holder)
                    waited = True
                time.sleep(LOCK_POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()} {who}".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
