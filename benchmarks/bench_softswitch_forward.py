"""Frames per second forwarded by one `p4nsm-softswitch` (root; creates and removes veth pairs).

    sudo .venv/bin/python benchmarks/bench_softswitch_forward.py [--seconds 3] [--rates 10000,20000,40000,80000,0]

Topology: sender veth -> switch port 1, switch port 2 -> sink veth, all in this namespace.
Scenarios:
  edge     host frames (802.1Q VLAN 100) -> push a label -> pop to VLAN 200 on port 2
  transit  MPLS frames from a fabric port -> swap the label -> port 2
The sender processes send pre-built minimum-size frames from raw sockets, paced to each offered
rate (0: as fast as they can). Offered = what the senders sent; forwarded = the sink's rx
counter over the middle of the step; loss = frames sent that never reached the sink.
Results go to stdout and benchmarks/results/softswitch_forward.md.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.netns import Lab, can_run  # noqa: E402
from tests.support.fixtures import start_softswitch  # noqa: E402
from tests.support.p4rt import P4RTTestClient  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "softswitch_forward.md"
BMV2_QUOTED = 15_000  # frames/s simple_switch_grpc forwards at saturation on a 2-core machine of this kind (measured with a real build)
FRAME_LEN = 64
BATCH = 50
SETTLE = 0.5  # s after the senders stop, for frames still queued in the switch
LOAD_BEFORE = 0.0
LOSSLESS = 0.001  # a step with less loss than this counts as lossless

MAC = bytes.fromhex("020000000b02" "020000000a01")
EDGE_FRAME = MAC + bytes.fromhex("8100" "0064" "88b6")
# MPLS label 1000, bos, ttl 64, then the 802.1Q header that fabric links carry
TRANSIT_FRAME = MAC + bytes.fromhex("8847" "003e8140" "0064" "88b6")


def frame(scenario: str) -> bytes:
    head = EDGE_FRAME if scenario == "edge" else TRANSIT_FRAME
    return head + bytes(FRAME_LEN - len(head))


def rx_packets(ifname: str) -> int:
    return int(Path(f"/sys/class/net/{ifname}/statistics/rx_packets").read_text())


def sender(ifname: str, data: bytes, rate: float, seconds: float, sent: mp.Value) -> None:  # type: ignore[type-arg]
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.bind((ifname, 0))
    send = sock.send
    start = time.monotonic()
    end = start + seconds
    count = 0
    now = start
    while now < end:
        for _ in range(BATCH):
            try:
                send(data)
            except OSError:
                continue
            count += 1
        now = time.monotonic()
        if rate > 0:
            due = start + count / rate
            if due > now:
                time.sleep(due - now)
                now = time.monotonic()
    with sent.get_lock():
        sent.value += count


def rx_costs(rounds: int = 40, burst: int = 2000) -> dict[str, object]:
    """Per-frame cost of the two ways to read VLAN frames, and whether `ethtool -K rxvlan off`
    would keep tags in the frame (it does not on veth: the kernel untags in software)."""
    from softswitch.ports import _ANCILLARY_SPACE, RX_BUFFER, open_packet_socket

    data = frame("edge")
    out: dict[str, object] = {}
    with Lab() as lab:
        tx_if, rx_if = lab.veth()
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        tx.bind((tx_if, 0))
        rx = open_packet_socket(rx_if, socket.if_nametoindex(rx_if))
        ethtool = subprocess.run(["ethtool", "-K", rx_if, "rxvlan", "off"], capture_output=True)
        tx.send(data)
        time.sleep(0.05)
        out["tag kept in the frame with rxvlan off"] = (
            "n/a (ethtool failed)" if ethtool.returncode else rx.recv(RX_BUFFER)[12:14] == b"\x81\x00"
        )
        readers = {
            "recv() (tag lost)": lambda: rx.recv(RX_BUFFER),
            "recvmsg() + PACKET_AUXDATA (tag restored)": lambda: rx.recvmsg(RX_BUFFER, _ANCILLARY_SPACE),
        }
        for name, read in readers.items():
            spent, count = 0.0, 0
            for _ in range(rounds):
                for _ in range(burst):
                    tx.send(data)
                start = time.perf_counter()
                try:
                    while True:
                        read()
                        count += 1
                except BlockingIOError:
                    pass
                spent += time.perf_counter() - start
            out[name] = spent / count * 1e9
        tx.close()
        rx.close()
    return out


def program(address: str, scenario: str) -> None:
    with P4RTTestClient(address, device_id=1, election_id=10) as c:
        c.set_pipeline()
        if scenario == "edge":
            c.insert([
                c.table_entry("edge_classify", {"ingress_port": 1, "vlan_id": 100}, "push_label", {"label": 1000}),
                c.table_entry("label_fwd", {"label": 1000}, "pop_to_edge", {"port": 2, "vlan_id": 200}),
            ])
        else:
            c.insert([
                c.table_entry("fabric_ports", {"ingress_port": 1}, "mark_fabric"),
                c.table_entry("label_fwd", {"label": 1000}, "swap_forward", {"label": 2000, "port": 2}),
            ])


def step(tx_if: str, sink_if: str, data: bytes, rate: float, seconds: float, senders: int) -> dict[str, float]:
    sent = mp.Value("q", 0)
    procs = [mp.Process(target=sender, args=(tx_if, data, rate / senders, seconds, sent)) for _ in range(senders)]
    before = rx_packets(sink_if)
    for p in procs:
        p.start()
    # The steady part of the step: after the start-up, before the end.
    time.sleep(seconds * 0.2)
    window_start, window_count = time.monotonic(), rx_packets(sink_if)
    time.sleep(seconds * 0.6)
    window = (rx_packets(sink_if) - window_count) / (time.monotonic() - window_start)
    for p in procs:
        p.join()
    time.sleep(SETTLE)
    delivered = rx_packets(sink_if) - before
    return {
        "offered": sent.value / seconds,
        "forwarded": window,
        "loss": 1 - delivered / sent.value if sent.value else 0.0,
    }


def run(scenario: str, rates: list[float], seconds: float, senders: int) -> list[dict[str, float]]:
    with Lab() as lab:
        tx_if, port1 = lab.veth()
        port2, sink_if = lab.veth()
        with start_softswitch(1, 255, [f"1@{port1}", f"2@{port2}"], extra_args=["--log-level", "warn"]) as sw:
            program(sw.address, scenario)
            data = frame(scenario)
            step(tx_if, sink_if, data, 1000, 0.5, 1)  # warm-up
            rows = []
            for rate in rates:
                row = {"rate": rate, **step(tx_if, sink_if, data, rate, seconds, senders)}
                rows.append(row)
                shown = f"{rate:,.0f}/s" if rate else "unlimited"
                print(f"{scenario:8s} target {shown:>12s}  offered {row['offered']:>10,.0f}/s  "
                      f"forwarded {row['forwarded']:>10,.0f}/s  loss {row['loss']:6.1%}", flush=True)
            return rows


def report(
    results: dict[str, list[dict[str, float]]], rx: dict[str, object], command: str, seconds: float, senders: int
) -> str:
    def saturation(rows: list[dict[str, float]]) -> dict[str, float]:
        return max(rows, key=lambda r: r["forwarded"])

    lines = [
        "# Softswitch forwarding rate",
        "",
        f"Measured {datetime.date.today().isoformat()} on {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}; {FRAME_LEN}-byte frames, {seconds:g} s per step, {senders} sender "
        "process(es) on the same machine (they share the CPUs with the switch); 1-minute load average "
        f"before the run: {LOAD_BEFORE:.2f} (other work on the machine lowers the figures).",
        "",
        f"Command: `{command}`",
        "",
        "## At saturation",
        "",
        "| switch | scenario | forwarded frames/s | offered frames/s | loss | highest step without loss |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for scenario, rows in results.items():
        best = saturation(rows)
        clean = max((r["offered"] for r in rows if r["loss"] < LOSSLESS), default=0.0)
        lines.append(f"| p4nsm-softswitch (measured) | {scenario} | {best['forwarded']:,.0f} | "
                     f"{best['offered']:,.0f} | {best['loss']:.1%} | {clean:,.0f} |")
    lines += [
        f"| BMv2 simple_switch_grpc (quoted from the README's BMv2 target notes, not measured here) | edge-like | "
        f"~{BMV2_QUOTED:,} | saturating | - | - |",
        "",
        "## Every step",
        "",
        "| scenario | target frames/s | offered frames/s | forwarded frames/s | loss |",
        "|---|---:|---:|---:|---:|",
    ]
    for scenario, rows in results.items():
        for r in rows:
            target = f"{r['rate']:,.0f}" if r["rate"] else "unlimited"
            lines.append(f"| {scenario} | {target} | {r['offered']:,.0f} | {r['forwarded']:,.0f} | {r['loss']:.1%} |")
    lines += [
        "",
        "Scenarios: `edge` = 802.1Q frame in, push_label then pop_to_edge out (two table lookups plus the "
        "direct counter); `transit` = MPLS frame from a fabric port, swap_forward. Forwarded is the sink "
        "interface's rx counter over the middle 60% of a step; loss counts every frame sent that never "
        "reached the sink (the switch's socket buffer overflows once it saturates).",
        "",
        "## Receiving VLAN frames",
        "",
        "Linux takes the outer 802.1Q tag out of the frame before a packet socket sees it. The switch "
        "reads it back with PACKET_AUXDATA; turning VLAN offload off is no alternative on veth:",
        "",
        "| receive path | ns per frame (or result) |",
        "|---|---:|",
    ]
    for name, value in rx.items():
        shown = f"{value:,.0f}" if isinstance(value, float) else str(value)
        lines.append(f"| {name} | {shown} |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one step")
    parser.add_argument("--rates", default="10000,20000,40000,80000,0",
                        help="offered rates in frames/s, comma-separated; 0 = as fast as the senders go")
    parser.add_argument("--senders", type=int, default=1, help="sender processes")
    parser.add_argument("--scenarios", default="edge,transit")
    parser.add_argument("--no-write", action="store_true", help="print only; leave the results file alone")
    args = parser.parse_args()
    why_not = can_run()
    if why_not:
        sys.exit(why_not)
    global LOAD_BEFORE
    LOAD_BEFORE = os.getloadavg()[0]
    rates = [float(r) for r in args.rates.split(",")]
    results = {s: run(s, rates, args.seconds, args.senders) for s in args.scenarios.split(",")}
    rx = rx_costs()
    for name, value in rx.items():
        print(f"receive: {name}: {value:,.0f} ns/frame" if isinstance(value, float) else f"receive: {name}: {value}")
    for scenario, rows in results.items():
        best = max(rows, key=lambda r: r["forwarded"])
        print(f"{scenario}: {best['forwarded']:,.0f} frames/s forwarded at saturation "
              f"(offered {best['offered']:,.0f}/s, loss {best['loss']:.1%}); BMv2 quoted ~{BMV2_QUOTED:,}/s")
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        command = " ".join([".venv/bin/python", "benchmarks/bench_softswitch_forward.py", *sys.argv[1:]])
        RESULTS.write_text(report(results, rx, command, args.seconds, args.senders))
        print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
