"""A sequence-numbered UDP stream between two hosts' namespaces, as an application would send it
over an NSM connection; each end runs inside its netns:

    ip netns exec h4 python -m tests.e2e.udp_stream recv 10.60.0.1 5555
    ip netns exec h1 python -m tests.e2e.udp_stream send 10.60.0.1 5555 --rate 500 --seconds 14

`recv` prints "ready" once bound, counts distinct sequence numbers until stdin closes, then
prints one JSON line: {"received": N, "max_gap_ms": G, "missing": [...]} (G: the longest time
between two packets; missing: the first sequence numbers that never came). `send` paces packets at `rate` per second for `seconds` (a late packet does not
shorten the next wait, so the count is exact) and prints {"sent": N}."""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import time

HEADER = struct.Struct("!Q")
RCVBUF = 4 << 20
DRAIN_IDLE_S = 0.3  # after stdin closes: how long the socket must stay silent before counting stops
MISSING_SHOWN = 50  # sequence numbers below the highest received that never came, first ones


def receive(address: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # a receiver starved for a moment on a loaded machine must not drop what arrived
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.bind((address, port))
    print("ready", flush=True)
    seen: set[int] = set()
    last = 0.0
    max_gap = 0.0
    counting = True
    while counting:
        ready, _, _ = select.select([sock, sys.stdin], [], [])
        if sys.stdin in ready and not sys.stdin.readline():
            # The sender is done, but its last packets may still be queued here or on their way
            # through the veths: read on until the socket has been idle for a while.
            counting = False
            sock.settimeout(DRAIN_IDLE_S)
        if sock in ready or not counting:
            while True:
                try:
                    data = sock.recv(2048) if not counting else sock.recv(2048, socket.MSG_DONTWAIT)
                except (BlockingIOError, TimeoutError):
                    break
                now = time.monotonic()
                if last:
                    max_gap = max(max_gap, now - last)
                last = now
                seen.add(HEADER.unpack_from(data)[0])
                if counting:
                    break
    missing = sorted(set(range(max(seen) + 1)) - seen) if seen else []
    print(json.dumps({"received": len(seen), "max_gap_ms": round(max_gap * 1000, 1), "missing": missing[:MISSING_SHOWN]}),
          flush=True)


def send(address: str, port: int, rate: float, seconds: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    period = 1.0 / rate
    count = int(rate * seconds)
    start = time.monotonic()
    errors = 0
    for seq in range(count):
        due = start + seq * period
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        try:
            sock.sendto(HEADER.pack(seq) + bytes(56), (address, port))
        except OSError:  # no route for a moment: counted as lost by the receiver
            errors += 1
    print(json.dumps({"sent": count, "errors": errors}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["send", "recv"])
    parser.add_argument("address")
    parser.add_argument("port", type=int)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if args.mode == "recv":
        receive(args.address, args.port)
    else:
        send(args.address, args.port, args.rate, args.seconds)


if __name__ == "__main__":
    main()
