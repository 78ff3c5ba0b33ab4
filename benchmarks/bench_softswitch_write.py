"""Write throughput of the softswitch's P4Runtime server, over real gRPC.

    .venv/bin/python benchmarks/bench_softswitch_write.py [--runs 3]

Starts a fresh `p4nsm-softswitch`, commits nsm_fabric, and INSERTs into FabricIngress.label_fwd
(exact match, 32768 entries) in batches of 1, 100 and 1,000, one Write RPC at a time. Two
figures per batch size:
  * server: requests serialized before the clock starts, so the time is the RPC round trip
    and the server's decoding and applying (client and server share the machine's 2 cores);
  * end to end: building the TableEntry protos by name and serializing them is timed too.
Prints a markdown table and writes it to benchmarks/results/softswitch_write.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from finsy.proto import p4r  # noqa: E402

from tests.support.fixtures import start_softswitch  # noqa: E402
from tests.support.p4rt import P4RTTestClient  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "softswitch_write.md"
CASES = [(1, 2_000), (100, 20_000), (1_000, 20_000)]  # (batch size, entries)
# Quoted from the README's BMv2 target notes (simple_switch_grpc 1.15.5 on a 2-core machine).
BMV2_QUOTED = {1: "≈2,700", 100: "≈50,000", 1_000: "≈50,000"}


def requests_for(client: P4RTTestClient, batch: int, total: int) -> list[p4r.WriteRequest]:
    out = []
    for start in range(0, total, batch):
        updates = [
            p4r.Update(
                type=p4r.Update.INSERT,
                entity=p4r.Entity(
                    table_entry=client.table_entry("label_fwd", {"label": i}, "forward", {"port": i % 510 + 1})
                ),
            )
            for i in range(start + 1, start + batch + 1)
        ]
        out.append(client.write_request(updates))
    return out


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_case(client: P4RTTestClient, batch: int, total: int) -> tuple[float, float]:
    """(server entries/s, end-to-end entries/s) for one batch size, each on a fresh pipeline."""
    raw_write = client.channel.unary_unary(
        "/p4.v1.P4Runtime/Write", request_serializer=None, response_deserializer=p4r.WriteResponse.FromString
    )
    client.set_pipeline()
    payloads = [r.SerializeToString() for r in requests_for(client, batch, total)]

    def send_serialized() -> None:
        for payload in payloads:
            raw_write(payload, timeout=60)

    server = total / timed(send_serialized)

    client.set_pipeline()

    def build_and_send() -> None:
        for request in requests_for(client, batch, total):
            client.stub.Write(request, timeout=60)

    end_to_end = total / timed(build_and_send)
    return server, end_to_end


def empty_write_rate(client: P4RTTestClient, count: int = 1_000) -> float:
    """Write RPCs/s with no update: the per-RPC floor of gRPC Python on both ends."""
    request = client.write_request([])
    return count / timed(lambda: [client.stub.Write(request, timeout=60) for _ in range(count)] and None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per batch size; the median is reported")
    args = parser.parse_args()
    rows = []
    with start_softswitch() as switch:
        client = P4RTTestClient(switch.address, election_id=1)
        try:
            client.set_pipeline()
            client.write(requests_for(client, 100, 1_000)[0].updates)  # warm-up
            for batch, total in CASES:
                results = [run_case(client, batch, total) for _ in range(args.runs)]
                server = statistics.median(r[0] for r in results)
                e2e = statistics.median(r[1] for r in results)
                rows.append((batch, total, server, e2e))
                print(f"batch={batch} entries={total} server={server:,.0f}/s end_to_end={e2e:,.0f}/s", flush=True)
            floor = empty_write_rate(client)
            print(f"empty Write RPCs: {floor:,.0f}/s", flush=True)
        finally:
            client.close()

    lines = [
        "# Softswitch P4Runtime Write throughput",
        "",
        f"Measured by `benchmarks/bench_softswitch_write.py` on {platform.node()} "
        f"({platform.machine()}, Python {platform.python_version()}), {time.strftime('%Y-%m-%d %H:%M')}; "
        f"median of {args.runs} runs; INSERT into `FabricIngress.label_fwd` (exact), one Write at a time.",
        "",
        "| batch size | entries | softswitch, server (entries/s) | softswitch, end to end (entries/s) "
        "| BMv2 (quoted, not measured here) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for batch, total, server, e2e in rows:
        lines.append(f"| {batch:,} | {total:,} | {server:,.0f} | {e2e:,.0f} | {BMV2_QUOTED[batch]} |")
    lines += [
        "",
        "*server*: requests serialized before timing (RPC round trip + server decode/apply).",
        "*end to end*: the test client also builds the entries by name and serializes them.",
        f"Batches of 1 are bounded by the per-RPC cost of gRPC Python: an empty Write makes {floor:,.0f} "
        "round trips/s on the same run.",
        "BMv2 figures are quoted from the README's BMv2 target notes (simple_switch_grpc 1.15.5, 2-core machine).",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
