"""The etcd store on a 3-member loopback cluster (tests/support/etcd_cluster.py, members tuned for
a 1 s lease): what a writer waits in durable(), and how long a follower takes to lead.

Rows: durable() after one put (each put waits for its commit); durable() after a burst of puts
(one wait for all); takeover after the leader stops (it revokes its lease); takeover after the
leader process is SIGKILLed (its lease must expire: TTL 1 s, etcd checks every 500 ms).

    .venv/bin/python benchmarks/bench_etcd_store.py [--trials 20] [--out benchmarks/results/etcd_store.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.fabric.etcd_store import EtcdStore
from tests.support.etcd_cluster import EtcdCluster
from tests.unit.test_fabric_paths import plan_on_line

# A leader in its own process, to be killed: prints its term once it leads, then idles.
LEADER = """
import asyncio, sys
from controller.fabric.etcd_store import EtcdStore
async def main():
    s = EtcdStore(sys.argv[1], "bench", sys.argv[2], topology="bench", digest="d", lease_ttl=1, timeout=2.0)
    await s.start()
    term = await s.election.wait_term()
    print(term.revision, flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def row(name: str, xs: list[float]) -> str:
    ms = [x * 1000 for x in xs]
    return f"| {name} | {len(ms)} | {pct(ms, 50):.1f} | {pct(ms, 99):.1f} | {max(ms):.1f} |"


async def store(url: str, replica: str) -> EtcdStore:
    s = EtcdStore(url, "bench", replica, topology="bench", digest="d", lease_ttl=1, timeout=5.0)
    await s.start()
    return s


async def following(s: EtcdStore) -> None:
    """Until the new replica watches the leader key (ready to take over)."""
    assert s.election is not None
    await asyncio.wait_for(s.election.watching.wait(), 10)


async def durable_rows(url: str, n: int) -> list[str]:
    leader = await store(url, "writer")
    await leader.election.wait_term(10)  # type: ignore[union-attr]
    plan = plan_on_line()
    single: list[float] = []
    for i in range(n):
        t = time.perf_counter()
        leader.put(plan.model_copy(update={"id": f"one{i}"}))
        await leader.durable()
        single.append(time.perf_counter() - t)
    burst: list[float] = []
    for r in range(max(3, n // 100)):
        t = time.perf_counter()
        for i in range(1000):
            leader.put(plan.model_copy(update={"id": f"burst{r}-{i}"}))
        await leader.durable()
        burst.append(time.perf_counter() - t)
    await leader.stop()
    return [row("durable() after 1 put", single), row("durable() after 1000 puts (8 txns)", burst)]


async def takeover_after_stop(url: str, trials: int) -> list[float]:
    out = []
    follower = await store(url, "f0")
    for i in range(trials):
        leader = follower
        await leader.election.wait_term(10)  # type: ignore[union-attr]
        follower = await store(url, f"f{i + 1}")
        await following(follower)
        won: list[float] = []
        follower.election.on_change.append(lambda term, won=won: won.append(time.perf_counter()))  # type: ignore[union-attr]
        t = time.perf_counter()
        await leader.stop()
        await follower.election.wait_term(10)  # type: ignore[union-attr]
        out.append(won[0] - t)
    await follower.stop()
    return out


async def takeover_after_kill(url: str, trials: int) -> list[float]:
    out = []
    for i in range(trials):
        proc = subprocess.Popen([sys.executable, "-c", LEADER, url, f"k{i}"], stdout=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parents[1])
        follower: EtcdStore | None = None
        try:
            assert proc.stdout is not None
            assert (await asyncio.to_thread(proc.stdout.readline)).strip(), "the leader process did not lead"
            follower = await store(url, f"k-follower{i}")
            await following(follower)
            won: list[float] = []
            follower.election.on_change.append(lambda term, won=won: won.append(time.perf_counter()))  # type: ignore[union-attr]
            t = time.perf_counter()
            os.kill(proc.pid, signal.SIGKILL)
            await follower.election.wait_term(10)  # type: ignore[union-attr]
            out.append(won[0] - t)
        finally:
            proc.kill()
            proc.wait()
            if follower is not None:
                await follower.stop()
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--puts", type=int, default=500)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "etcd_store.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = EtcdCluster.make(Path(tmp) / "etcd")
        cluster.start()
        try:
            rows = await durable_rows(cluster.url, args.puts)
            rows.append(row("takeover after the leader stops (lease revoked)", await takeover_after_stop(cluster.url, args.trials)))
            rows.append(row("takeover after the leader is SIGKILLed (lease expires)", await takeover_after_kill(cluster.url, args.trials)))
        finally:
            cluster.close()
    table = "\n".join(["| what | n | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|", *rows])
    text = (f"# etcd store: durable() and takeover\n\n3 etcd {subprocess.run(['etcd', '--version'], capture_output=True, text=True).stdout.split()[2]} "
            f"members on loopback (heartbeat 100 ms, election timeout 600 ms), lease TTL 1 s, on a shared "
            f"{os.cpu_count()}-core machine. `{' '.join(['.venv/bin/python', 'benchmarks/bench_etcd_store.py', *sys.argv[1:]])}`\n\n"
            f"{table}\n\nWhere a takeover's time goes: after a stop, the revoke (one call) and the follower's "
            f"campaign (its watch sees the leader key go, one transaction, its cache is current already). After a "
            f"SIGKILL, the lease's TTL (1 s, counted from the last renewal, sent every 1/3 s) and etcd's search for "
            f"expired leases, every 500 ms; the campaign adds the same few ms. A commit is one etcd transaction "
            f"of at most 128 operations through the raft leader (an fsync on each member's disk).\n")
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    asyncio.run(main())
