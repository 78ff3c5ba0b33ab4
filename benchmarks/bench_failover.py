"""Failover of replicas (issue 10): the diamond of softswitches in Mininet on free ports, a
3-member etcd cluster on loopback (lease TTL 1 s), `p4nsm run` replicas as real processes, and
N direct connections (made through the leader's admin socket) each carrying a sequence-numbered
802.1Q stream of 100 frames/s (benchmarks/heal's senders and receivers).

Rows (benchmarks/failover/rows.py, chaos.py):
- A. controller restart: one controller on its sqlite store SIGKILLed under the streams and
  started again at once: frames lost (target 0), entity writes at start-up (target 0: its
  reconcile finds every entry), stored connections lost, time until every switch is reconciled
  (probes and heal run from then);
- B. leader SIGKILL with two followers, and 200 ms after the death a silent cut of the link most
  connections take first: frames sent before the cut that are lost (target 0), and the loss
  window of the connections crossing the cut (target: the takeover, minus the 200 ms, plus a
  silent cut's heal, 100 ms at N=100);
- C. a deposed leader waking up: SIGSTOP (connections being made and removed through it) until
  the follower leads, then SIGCONT: writes refused by the switches or etcd, and entries of its
  own left on the switches, read back (target 0: all refused);
- S. leader SIGKILL with one follower: death -> every switch has the new primary, split into
  election, arbitration and reconcile (target p50 <= 1 s); no connections;
- D. chaos: --chaos-seconds under the streams with a random failure every 2-5 s (silent cut, port
  down, transit switch SIGKILL or SIGSTOP, leader SIGKILL, an etcd member SIGKILL), each mended
  2-4 s later, one run per seed: connections with a surviving path that stopped delivering for
  more than 1 s, stored connections lost, orphaned entries at the end (targets 0).

    sudo flock /tmp/p4nsm-e2e.lock .venv/bin/python benchmarks/bench_failover.py --rows A,B,C,S --trials 20
    sudo flock /tmp/p4nsm-e2e.lock .venv/bin/python benchmarks/bench_failover.py --rows D --seeds 1,2,3,4,5
    sudo .venv/bin/python benchmarks/bench_failover.py --quick     # 4 connections, 2 trials, 15 s of chaos; writes nothing

Writes benchmarks/results/failover.md (a section per row; a row run again replaces only its own)
and, for D, benchmarks/results/failover_chaos.md. Row A runs first whatever the order asked: its
controller takes the settings' fixed election id, which must not be below what the switches saw
from the etcd replicas' terms."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.failover import chaos, report, rows  # noqa: E402
from benchmarks.failover.lab import Bench  # noqa: E402
from tests.e2e.replica_process import free_port_diamond  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
ORDER = "ASBCD"
RUNNERS = {"A": rows.row_a, "B": rows.row_b, "C": rows.row_c, "S": rows.row_s}
TITLE = "Failover of replicas (benchmarks/bench_failover.py)"
INTRO = ("Diamond of softswitches in Mininet on free ports, a 3-member etcd cluster on loopback (lease TTL 1 s), "
         "`p4nsm run` replicas as processes, direct connections made through the leader's admin socket, each with a "
         "sequence-numbered 802.1Q stream of 100 frames/s. *target met* judges the figure the target names: a zero "
         "target holds only if the worst trial has 0; a p50 target on the p50. Anchor: onos-config's HA test, about 60 s "
         "from a master's death to the device being updated again.")


def say(text: str) -> None:
    print(text, flush=True)


def machine() -> str:
    return (f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()} ({os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.1f}), a machine shared with other work")


async def run(bench: Bench, args: argparse.Namespace) -> None:
    for row in args.rows:
        notes: list[str] = []
        try:
            await asyncio.to_thread(bench.clear_hosts, notes)
            await run_row(bench, args, row, notes)
        finally:
            bench.stop_all()


async def run_row(bench: Bench, args: argparse.Namespace, row: str, notes: list[str]) -> None:
    if row == "D":
        # written after each seed: a lab hold is short, and a run cut off keeps the seeds before it
        path = RESULTS / "failover_chaos.md"
        runs: list[dict[str, Any]] = []
        for seed in args.seeds:
            say(f"=== D: chaos, seed {seed}, {args.chaos_seconds:g} s, N={args.n}")
            seed_notes: list[str] = []
            result = await chaos.run_chaos(bench, args.n, args.chaos_seconds, seed, say, seed_notes)
            result["notes"], notes[:] = notes + seed_notes, []
            say(f"D seed {seed}: {result}")
            runs = report.chaos_runs(path, [result]) if not args.no_write else [*runs, result]
            header = (f"# Chaos (benchmarks/bench_failover.py --rows D)\n\nRuns of {args.chaos_seconds:g} s, N={args.n} "
                      f"connections with streams, three replicas on the 3-member etcd; last written {machine()}. Last "
                      f"command: `{args.command}` (a seed run again replaces its row). A run is repeated by its seed (the "
                      "failures and their timing; the machine's timing is its own).")
            text = report.chaos_table(runs, header)
            say(text)
            if not args.no_write:
                path.write_text(text)
        return
    n = 0 if row == "S" else args.n
    say(f"=== {row}: {report.ROWS[row][0]}; {args.trials} trials, N={n}")
    trials = await RUNNERS[row](bench, n, args.trials, say, notes)
    what = "no connections" if row == "S" else (f"N={n} connections" + ("" if row == "C" else " with streams"))
    header = f"{len(trials)} trials, {what}; {machine()}. Command: `{args.command}`."
    section = report.table(row, trials, header, notes)
    say(section)
    if not args.no_write:
        path = RESULTS / "failover.md"
        path.write_text(report.merge(path, TITLE, INTRO, {row: section}))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="A,S,B,C,D", help="comma-separated: A, B, C, S, D (A always first)")
    p.add_argument("--trials", type=int, help="trials per row (default 20; 2 with --quick)")
    p.add_argument("--n", type=int, help="connections with streams (default 100; 4 with --quick)")
    p.add_argument("--seeds", default="1,2,3,4,5", help="row D: one chaos run per seed")
    p.add_argument("--chaos-seconds", type=float, help="row D: seconds of failures per run (default 60; 15 with --quick)")
    p.add_argument("--quick", action="store_true", help="a check that everything runs: 4 connections, 2 trials, "
                                                         "one 15 s chaos run; writes nothing")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                   help="setting of every replica, over the replicas' test settings (repeatable), e.g. keepalive_timeout=0.15")
    args = p.parse_args(argv)
    args.settings = dict(s.split("=", 1) for s in args.settings)
    args.command = " ".join([".venv/bin/python", "benchmarks/bench_failover.py", *(argv if argv is not None else sys.argv[1:])])
    wanted = {r.strip().upper() for r in args.rows.split(",") if r.strip()}
    if wanted - set(ORDER):
        p.error(f"unknown rows {sorted(wanted - set(ORDER))}; choose from {', '.join(ORDER)}")
    args.rows = [r for r in ORDER if r in wanted]
    args.trials = args.trials or (2 if args.quick else 20)
    args.n = args.n or (4 if args.quick else 100)
    args.chaos_seconds = args.chaos_seconds or (15.0 if args.quick else 60.0)
    args.seeds = [int(s) for s in args.seeds.split(",")][: 1 if args.quick else None]
    args.no_write = args.no_write or args.quick
    return args


def _terminated(signum: int, frame: object) -> None:
    say(f"received {signal.Signals(signum).name} from outside; stopping")
    raise KeyboardInterrupt


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: Mininet, network namespaces, raw sockets")
    # SIGTERM (a `timeout` around the run) ends it like Ctrl-C: replicas, etcd and the lab stopped
    signal.signal(signal.SIGTERM, _terminated)
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        # The lab outside the event loop: pyroute2's IPRoute runs a loop of its own, which cannot nest.
        with Bench.open(Path(tmp), free_port_diamond()) as bench:
            bench.extra = args.settings
            asyncio.run(run(bench, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
