"""Capture of the benchmark's frames on one host interface, with receive times; runs inside the
host's netns:

    ip netns exec h4 python -m benchmarks.heal.receiver h4-eth0

Control on stdin, one JSON object per line, answered on stdout:
  {"op": "start", "trial": T}           -> {"ok": true}: keep frames of trial T from now on
  {"op": "stop", "path": P}             -> {"ok": true, "count": N, "other": M}: records written
                                           to P (wire.RECORD each), capture of T ends
The receive time is taken in user space right after recv(); the analysis uses it only for
"when did this stream deliver again", which is coarser than the scheduling noise it adds.
Exits on EOF (its parent is gone).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

from benchmarks.heal.wire import RECORD, parse
from softswitch.ports import open_packet_socket

POLL_S = 0.05


class Capture:
    def __init__(self, iface: str) -> None:
        self.sock = open_packet_socket(iface, socket.if_nametoindex(iface))
        self.sock.setblocking(True)
        self.sock.settimeout(POLL_S)
        self.lock = threading.Lock()
        self.trial = -1
        self.records = bytearray()
        self.other = 0

    def run(self) -> None:
        buf = bytearray(2048)
        view = memoryview(buf)
        recv_into, now_ns, pack = self.sock.recv_into, time.monotonic_ns, RECORD.pack
        while True:
            try:
                n = recv_into(buf)
            except TimeoutError:
                continue
            rx = now_ns()
            got = parse(view, n)
            with self.lock:
                if got is None or got[0] != self.trial:
                    self.other += 1  # anything else, or a straggler of an earlier trial
                    continue
                self.records += pack(got[1], got[2], got[3], rx)

    def start(self, trial: int) -> None:
        with self.lock:
            self.trial, self.records, self.other = trial, bytearray(), 0

    def stop(self, path: str) -> dict[str, object]:
        with self.lock:
            records, other, self.trial, self.records = self.records, self.other, -1, bytearray()
        with open(path, "wb") as f:
            f.write(records)
        return {"ok": True, "count": len(records) // RECORD.size, "other": other}


def main() -> None:
    capture = Capture(sys.argv[1])
    threading.Thread(target=capture.run, daemon=True, name="capture").start()
    print(json.dumps({"ok": True, "ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "start":
                capture.start(req["trial"])
                reply: dict[str, object] = {"ok": True}
            elif req["op"] == "stop":
                reply = capture.stop(req["path"])
            else:
                reply = {"ok": False, "error": f"unknown op {req['op']!r}"}
        except Exception as err:
            reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        print(json.dumps(reply), flush=True)
    os._exit(0)  # the capture thread is blocked in recv; nothing of it needs to be flushed


if __name__ == "__main__":
    main()
