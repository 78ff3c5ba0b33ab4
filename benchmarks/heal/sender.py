"""Paced, sequence-numbered streams out of one host interface; runs inside the host's netns:

    ip netns exec h1 python -m benchmarks.heal.sender h1-eth0

Driven by one JSON object per line on stdin, answered by one per line on stdout:
  {"op": "flows", "flows": [[stream, frame_hex, rate], ...]}  -> {"ok": true}
  {"op": "run", "trial": T, "start_ns": S, "seconds": D}
      -> {"ok": true, "sent": [...per flow...], "late_max_ms": L, "errors": E} once D seconds are over
Each flow's frame is built once by the caller (tagged with the connection's VLAN); only the
trial, sequence number and send time are patched in per frame. Flows start at spread phases
so that the streams do not all fire in the same instant. Exits on EOF (its parent is gone).
"""

from __future__ import annotations

import heapq
import json
import socket
import sys
import time

from benchmarks.heal.wire import MAGIC, OFFSET_TAGGED, PAYLOAD

# Frames due within this much of now go out in the same pass: time.sleep cannot wake up more
# precisely than ~0.1 ms, and a late frame still carries its true send time.
SLACK_NS = 200_000
GOLDEN = 0.6180339887


class Flow:
    __slots__ = ("stream", "frame", "period_ns", "phase_ns", "seq")

    def __init__(self, stream: int, frame: bytes, rate: float, index: int) -> None:
        self.stream = stream
        self.frame = bytearray(frame)
        self.period_ns = int(1e9 / rate)
        self.phase_ns = int(((index * GOLDEN) % 1.0) * self.period_ns)
        self.seq = 0


def run(sock: socket.socket, flows: list[Flow], trial: int, start_ns: int, seconds: float) -> dict[str, object]:
    end_ns = start_ns + int(seconds * 1e9)
    due = [(start_ns + f.phase_ns, i) for i, f in enumerate(flows)]
    heapq.heapify(due)
    for f in flows:
        f.seq = 0
    late_max = errors = 0
    pack, send, now_ns = PAYLOAD.pack_into, sock.send, time.monotonic_ns
    while due:
        at, i = due[0]
        now = now_ns()
        if at >= end_ns:
            break
        if at > now + SLACK_NS:
            time.sleep((at - now - SLACK_NS // 2) / 1e9)
            continue
        heapq.heapreplace(due, (at + flows[i].period_ns, i))
        f = flows[i]
        late_max = max(late_max, now - at)
        pack(f.frame, OFFSET_TAGGED, MAGIC, trial, f.stream, f.seq, now)
        try:
            send(f.frame)
        except OSError:
            errors += 1  # the sequence number is spent all the same: a lost frame, seen as one
        f.seq += 1
    return {"ok": True, "sent": [f.seq for f in flows], "late_max_ms": late_max / 1e6, "errors": errors}


def main() -> None:
    iface = sys.argv[1]
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.bind((iface, 0))
    flows: list[Flow] = []
    print(json.dumps({"ok": True, "ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "flows":
                flows = [Flow(s, bytes.fromhex(h), r, i) for i, (s, h, r) in enumerate(req["flows"])]
                reply: dict[str, object] = {"ok": True}
            elif req["op"] == "run":
                reply = run(sock, flows, req["trial"], req["start_ns"], req["seconds"])
            else:
                reply = {"ok": False, "error": f"unknown op {req['op']!r}"}
        except Exception as err:  # the orchestrator reads the reason instead of a dead pipe
            reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
