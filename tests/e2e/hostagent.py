"""A scapy host living in one network namespace, driven over stdin/stdout (one JSON per line).

Run as `ip netns exec NS python hostagent.py`; scapy is imported once per host instead of
once per send or capture. Requests and replies:
  {"op": "listen", "iface": I}                   -> {"ok": true} once the capture socket is open
  {"op": "send", "iface": I, "frames": [hex]}    -> {"ok": true}
  {"op": "take", "iface": I, "marker": hex, "count": N, "timeout": S}
      -> {"ok": true, "frames": [hex]}: received frames holding the marker since the last take,
         as soon as N have arrived, or all there are after S seconds
A failure answers {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import json
import select
import sys
import threading
import time

import scapy.layers.l2  # noqa: F401  (teaches L2Socket that ARPHRD_ETHER frames are Ether)
from scapy.arch.linux import L2Socket
from scapy.config import conf

REOPEN_DELAY = 0.05
MAX_FRAME = 65535


class Capture:
    """Frames received on one interface; L2Socket leaves out what this host sent itself.

    The socket is reopened when the interface goes down under it, so that a capture outlives
    a link failure that the test provokes.
    """

    def __init__(self, iface: str) -> None:
        self.iface = iface
        self.frames: list[bytes] = []
        self.cond = threading.Condition()
        self.started = threading.Event()
        threading.Thread(target=self._run, daemon=True, name=f"capture-{iface}").start()
        if not self.started.wait(5):
            raise RuntimeError(f"capture on {iface} did not start")

    def _run(self) -> None:
        while True:
            try:
                sock = L2Socket(iface=self.iface)
            except (OSError, ValueError):  # ValueError: scapy does not know the name (yet)
                # Scapy caches interface indexes: a re-created interface needs a reload.
                conf.ifaces.reload()
                time.sleep(REOPEN_DELAY)
                continue
            self.started.set()
            try:
                while True:
                    ready, _, _ = select.select([sock], [], [], REOPEN_DELAY)
                    if ready:
                        # The raw bytes (tag restored from PACKET_AUXDATA), not a re-build.
                        _cls, frame, _ts = sock.recv_raw(MAX_FRAME)
                        if frame is not None:
                            self._keep(frame)
            except OSError:
                time.sleep(REOPEN_DELAY)
            finally:
                sock.close()

    def _keep(self, frame: bytes) -> None:
        with self.cond:
            self.frames.append(frame)
            self.cond.notify_all()

    def take(self, marker: bytes, count: int, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                matching = [f for f in self.frames if marker in f]
                left = deadline - time.monotonic()
                if len(matching) >= count or left <= 0:
                    self.frames = [f for f in self.frames if marker not in f]
                    return matching
                self.cond.wait(left)


def send(senders: dict[str, L2Socket], iface: str, frames: list[bytes]) -> None:
    for attempt in (1, 2):
        try:
            sock = senders.get(iface) or senders.setdefault(iface, L2Socket(iface=iface))
            for frame in frames:
                sock.send(frame)
            return
        except (OSError, ValueError):
            stale = senders.pop(iface, None)
            if stale is not None:
                stale.close()
            if attempt == 2:
                raise
            conf.ifaces.reload()


def main() -> None:
    captures: dict[str, Capture] = {}
    senders: dict[str, L2Socket] = {}
    print(json.dumps({"ok": True, "ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            op = request["op"]
            iface = request.get("iface", "")
            reply: dict[str, object] = {"ok": True}
            if op == "listen":
                if iface not in captures:
                    captures[iface] = Capture(iface)
            elif op == "send":
                send(senders, iface, [bytes.fromhex(f) for f in request["frames"]])
            elif op == "take":
                frames = captures[iface].take(bytes.fromhex(request["marker"]), request["count"], request["timeout"])
                reply["frames"] = [f.hex() for f in frames]
            elif op == "quit":
                pass
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as err:  # the test reads the reason instead of a dead pipe
            reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        print(json.dumps(reply), flush=True)
        if request.get("op") == "quit":
            break


if __name__ == "__main__":
    main()
