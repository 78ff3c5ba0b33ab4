"""The orchestrator's side of the traffic: one sender process per source host and one receiver
per destination host, each started inside the host's namespace, and the streams they carry."""

from __future__ import annotations

import asyncio
import binascii
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.heal.wire import PAYLOAD, RECORD_DTYPE
from tests.e2e.topology import DST, tagged

REPO = Path(__file__).resolve().parents[2]
START_LEAD_S = 0.3  # between the run request and the first frame: every sender has it by then
DRAIN_S = 0.3  # after the last frame is sent, for frames still inside the switches
REPLY_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True)
class Stream:
    index: int  # stream number carried in the frames
    conn_id: str
    src: str  # host names
    dst: str
    vlan: int  # VLAN of the connection on the source host's link
    rate: float  # frames/s

    @property
    def period_ms(self) -> float:
        return 1000.0 / self.rate


def primary_member_src(index: int) -> str:
    """A source MAC of the stream's own that the head end's protection group hashes onto its
    primary member. The group (p4/nsm_fabric.p4 label_group) picks member crc16(src, dst) modulo
    the live members, the primary written first: without this choice about half of the streams
    would ride the backup leg and never meet the failed element."""
    dst = bytes.fromhex(DST.replace(":", ""))
    for salt in range(256):
        src = bytes([0x02, salt]) + index.to_bytes(4, "big")
        if binascii.crc_hqx(dst, binascii.crc_hqx(src, 0)) % 2 == 0:
            return ":".join(f"{b:02x}" for b in src)
    raise AssertionError("no even hash in 256 tries")


class NetnsProcess:
    """A Python module run with `ip netns exec`, spoken to in JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process, what: str) -> None:
        self.proc = proc
        self.what = what

    @classmethod
    async def start(cls, netns: str, module: str, *args: str) -> NetnsProcess:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", netns, sys.executable, "-m", module, *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=str(REPO),
            start_new_session=True,  # a Ctrl-C in the terminal is the orchestrator's to handle
        )
        self = cls(proc, f"{module} in {netns}")
        await self.reply()  # ready
        return self

    async def send(self, **request: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        await self.proc.stdin.drain()

    async def reply(self, timeout: float = REPLY_TIMEOUT_S) -> dict:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"{self.what} exited with {await self.proc.wait()}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"{self.what}: {reply.get('error')}")
        return reply

    async def call(self, **request: object) -> dict:
        await self.send(**request)
        return await self.reply()

    async def close(self) -> None:
        if self.proc.returncode is not None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # EOF: both kinds of process exit on their own
        try:
            await asyncio.wait_for(self.proc.wait(), 2.0)
        except TimeoutError:
            kill(self.proc.pid)
            await self.proc.wait()


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclasses.dataclass
class TrialTraffic:
    """What one trial's streams did: every received frame, and how many each stream sent."""

    records: np.ndarray  # RECORD_DTYPE
    sent: dict[int, int]  # stream -> frames sent
    start_ns: int
    end_ns: int
    late_max_ms: float
    send_errors: int


class Traffic:
    def __init__(self, streams: list[Stream], iface_of: dict[str, str], run_dir: Path) -> None:
        self.streams = streams
        self.iface_of = iface_of  # host -> its interface toward the fabric
        self.run_dir = run_dir
        self.senders: dict[str, NetnsProcess] = {}
        self.receivers: dict[str, NetnsProcess] = {}
        self._flows: dict[str, list[Stream]] = {}
        for s in streams:
            self._flows.setdefault(s.src, []).append(s)

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in (*self.senders.values(), *self.receivers.values())]

    async def start(self) -> None:
        for dst in sorted({s.dst for s in self.streams}):
            self.receivers[dst] = await NetnsProcess.start(dst, "benchmarks.heal.receiver", self.iface_of[dst])
        for src, flows in sorted(self._flows.items()):
            proc = self.senders[src] = await NetnsProcess.start(src, "benchmarks.heal.sender", self.iface_of[src])
            await proc.call(op="flows", flows=[[s.index, tagged(s.vlan, bytes(PAYLOAD.size), src=primary_member_src(s.index)).hex(), s.rate] for s in flows])

    async def run(self, trial: int, seconds: float) -> tuple[int, asyncio.Task[TrialTraffic]]:
        """Start a trial's streams; returns when the first frame goes out and a task that ends
        with the trial's traffic once the streams have stopped and drained."""
        for r in self.receivers.values():
            await r.call(op="start", trial=trial)
        start_ns = time.monotonic_ns() + int(START_LEAD_S * 1e9)
        for s in self.senders.values():
            await s.send(op="run", trial=trial, start_ns=start_ns, seconds=seconds)
        task = asyncio.create_task(self._finish(trial, start_ns, seconds))
        await asyncio.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9))
        return start_ns, task

    async def _finish(self, trial: int, start_ns: int, seconds: float) -> TrialTraffic:
        replies = {src: await s.reply(timeout=seconds + REPLY_TIMEOUT_S) for src, s in self.senders.items()}
        await asyncio.sleep(DRAIN_S)
        parts = []
        for dst, r in self.receivers.items():
            path = self.run_dir / f"rx-{dst}.bin"
            await r.call(op="stop", path=str(path))
            parts.append(np.fromfile(path, dtype=RECORD_DTYPE))
            path.unlink()
        sent = {s.index: n for src, reply in replies.items() for s, n in zip(self._flows[src], reply["sent"])}
        return TrialTraffic(
            records=np.concatenate(parts) if parts else np.zeros(0, RECORD_DTYPE), sent=sent, start_ns=start_ns,
            end_ns=start_ns + int(seconds * 1e9), late_max_ms=max(r["late_max_ms"] for r in replies.values()),
            send_errors=sum(r["errors"] for r in replies.values()),
        )

    async def close(self) -> None:
        for p in (*self.senders.values(), *self.receivers.values()):
            await p.close()
        self.senders.clear()
        self.receivers.clear()
