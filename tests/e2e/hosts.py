"""Test-side handle of a scapy host agent (tests/e2e/hostagent.py) in a namespace."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

AGENT = Path(__file__).with_name("hostagent.py")


class Host:
    """A namespace (or the root namespace when netns is None) that sends and captures frames."""

    def __init__(self, name: str, netns: str | None) -> None:
        self.name = name
        self.netns = netns
        prefix = ["ip", "netns", "exec", netns] if netns else []
        self.process = subprocess.Popen(
            [*prefix, sys.executable, str(AGENT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self._ready = False

    def _call(self, **request: object) -> dict:
        assert self.process.stdin is not None and self.process.stdout is not None
        if not self._ready:
            self.wait_ready()
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"host {self.name}: agent exited with {self.process.wait(5)}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"host {self.name}: {request.get('op')} failed: {reply.get('error')}")
        return reply

    def wait_ready(self) -> None:
        """Agents start in parallel; the first request waits for its own agent's import."""
        if self._ready:
            return
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError(f"host {self.name}: agent did not start ({self.process.poll()})")
        self._ready = True

    def listen(self, iface: str) -> None:
        self._call(op="listen", iface=iface)

    def send(self, iface: str, frames: Iterable[bytes]) -> None:
        self._call(op="send", iface=iface, frames=[f.hex() for f in frames])

    def take(self, iface: str, marker: bytes, count: int = 1, timeout: float = 2.0) -> list[bytes]:
        """Frames holding `marker` received on iface since the last take: N of them or what came within timeout."""
        return [bytes.fromhex(f) for f in self._call(op="take", iface=iface, marker=marker.hex(), count=count,
                                                    timeout=timeout)["frames"]]

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self._call(op="quit")
            except (RuntimeError, OSError, ValueError):
                pass
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
