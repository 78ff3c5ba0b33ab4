"""How long connections lose traffic when a fabric element fails and the controller heals them.

    sudo .venv/bin/python benchmarks/bench_heal.py [--topology diamond,fattree4] [--n 1,100,1000]
        [--trials 20] [--failures cut,port,kill,freeze] [--switch softswitch|bmv2] [--quick] [--set name=value ...]
        [--runs 3] [--burners 2]
    sudo .venv/bin/python benchmarks/bench_heal.py --final    # the README's headline rows (issue 16)

For each topology and N: a lab (Mininet; softswitches, or with --switch bmv2 BMv2's
simple_switch_grpc running p4c's build of p4/nsm_fabric.p4) and a controller in this process, N
connections between host pairs whose paths cross the core, and sequence-numbered 802.1Q
streams on a sample of them (all when N <= 100, else 100 spread over the set): 100 frames/s
each, the first at 1,000 frames/s. Each trial fails the element that most tracked connections
cross (a silent link cut, a port down, a switch SIGKILLed or SIGSTOPped) in the middle of the
streams, then restores it and waits until the fabric has settled (links up, backups in place).
Per connection the loss window is the largest run of lost sequence numbers times the stream's
interval; per trial, the time until every affected connection delivers again, and the
controller's own timeline (detection, last head-end write acknowledged).

Prints a CPU-speed reference (`sum(range(3*10**7))` in a fresh interpreter) and the load average
of each trial, and per case where the time went hop by hop (benchmarks/heal/hops.py). `--runs N`
repeats everything N times, `--runs-gap` apart, and reports each case's worst run with the spread
of the runs; `--burners K` runs K `yes > /dev/null` beside (rows labelled TOPOLOGY+Kyes).

Prints progress and the tables; writes benchmarks/results/heal.md (merged with what earlier
runs measured) and benchmarks/results/heal_<topology>_<failure>.png. Stops the lab and every
process it started on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.heal import analysis, plot, report, scenario  # noqa: E402
from benchmarks.heal.hops import HopRecorder  # noqa: E402
from benchmarks.heal.timeline import Timeline  # noqa: E402
from benchmarks.heal.traffic import Stream, Traffic, kill  # noqa: E402
from controller.runtime import Controller  # noqa: E402
from controller.settings import Settings  # noqa: E402
from controller.topology import host_ifname, load_topology  # noqa: E402
from lab.harness import Lab  # noqa: E402
from lab.p4c import controller_overrides, with_switch_kind  # noqa: E402
from lab.state import LOCK_PATH  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
TRACKED = 100  # streams at most by default: the issue asks for at least 100
RATE = 100.0  # frames/s per stream
FAST_RATE = 1000.0  # the first stream's rate
READY_TIMEOUT_S = 120.0
LAB_LOCK_TIMEOUT_S = 4 * 3600.0  # other labs (the test suite, other benchmarks) go first
SETTLE_TIMEOUT_S = 180.0

log = logging.getLogger("p4nsm.bench.heal")


def say(text: str) -> None:
    print(text, flush=True)


async def lab_lock_free() -> None:
    """Wait here, where Ctrl-C can still end the wait, until no other lab holds the machine's lab
    lock; Lab.start then takes it (and waits in its thread if another lab got in between)."""
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        with open(LOCK_PATH, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                if not waited:
                    f.seek(0)
                    say(f"  waiting for another lab to stop ({f.read().strip() or 'unknown'})")
                    waited = True
        await asyncio.sleep(1.0)


async def in_thread(fn, *args):
    """fn in a worker thread (pyroute2's blocking API refuses to run on a running loop), waited
    for to its end even when this task is cancelled: half a lab start or stop leaves debris."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()


class Case:
    """One topology and N: the lab, the controller, the connections, the traffic."""

    def __init__(self, args: argparse.Namespace, topo_name: str, n: int, run_dir: Path) -> None:
        self.args = args
        self.topo = with_switch_kind(load_topology(REPO / "topologies" / f"{topo_name}.yaml"), args.switch)
        # the results' topology column: BMv2 rows beside the softswitch's, not over them
        self.label = topo_name if args.switch == "softswitch" else f"{topo_name}-{args.switch}"
        if args.burners:
            self.label += f"+{args.burners}yes"  # beside the benchmark's own load: its own rows
        self.burners: list[subprocess.Popen[bytes]] = []
        self.n = n
        self.run_dir = run_dir
        self.lab: Lab | None = None
        self.ctl: Controller | None = None
        self.timeline: Timeline | None = None
        self.hops: HopRecorder | None = None
        self.traffic: Traffic | None = None
        self.fault: scenario.Fault | None = None
        self.trial_no = 0
        self.rows: list[dict] = []  # one per failure kind, as each completes

    async def run(self) -> None:
        try:
            # `yes > /dev/null` processes, as in the issue: CPU taken from the lab and the controller
            self.burners = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(self.args.burners)]
            await self._setup()
            baseline = await self._baseline()
            for kind in self.args.failures:
                trials = [await self._trial(kind, i) for i in range(self.args.trials)]
                self.rows.append(report.summarise(self.label, kind, self.n, trials, len(self.streams), self.mode,
                                                  self.args.command, baseline))
        finally:
            await self.close()

    @property
    def mode(self) -> str:
        ff = getattr(self.ctl.settings, "fast_failover", None) if self.ctl else None
        return "controller reroute only (no fast_failover setting)" if ff is None else f"fast_failover={ff}"

    async def _setup(self) -> None:
        a = self.args
        say(f"[{self.label} N={self.n:,}] starting the lab (waits for any other lab on this machine)")
        await lab_lock_free()
        self.lab = Lab(self.topo, self.run_dir, lock_timeout=LAB_LOCK_TIMEOUT_S, tls=False)  # plaintext switches: the recorded figures predate the lab's TLS
        await in_thread(self.lab.start)
        settings = Settings.load({"metrics_address": "127.0.0.1:0", "web_address": "127.0.0.1:0", "store_path": str(self.run_dir / "heal.sqlite"),
                                  **controller_overrides(a.switch, self.run_dir), **a.settings})
        self.ctl = Controller(self.topo, settings)
        self.timeline = Timeline(self.ctl)
        self.hops = HopRecorder(self.ctl)
        await self.ctl.start()
        if not await self.ctl.wait_ready(READY_TIMEOUT_S):
            raise RuntimeError("the switches did not become ready")
        pairs = scenario.host_pairs(self.topo)
        t0 = time.monotonic()
        plans = await scenario.connect_all(self.ctl, pairs, self.n, say)
        say(f"[{self.label} N={self.n:,}] {self.n:,} connections over {len(pairs)} host pairs in "
            f"{time.monotonic() - t0:.1f}s; {self.mode}")
        self.streams = [
            Stream(k, plans[i].id, plans[i].a.host, plans[i].b.host, plans[i].a.vlan, FAST_RATE if k == 0 else RATE)
            for k, i in enumerate(scenario.sample(self.n, self.args.tracked))
        ]
        self.traffic = Traffic(self.streams, {h.name: host_ifname(h.name) for h in self.topo.hosts}, self.run_dir)
        await self.traffic.start()
        offered = sum(s.rate for s in self.streams)
        say(f"[{self.label} N={self.n:,}] {len(self.streams)} tracked streams, {offered:,.0f} frames/s offered; "
            f"settling")
        await scenario.settle(self.ctl, SETTLE_TIMEOUT_S)

    async def _baseline(self) -> dict[str, float]:
        """A trial without failure: the rates the lab carries and the loss it has anyway."""
        assert self.traffic is not None
        self.trial_no += 1
        _, task = await self.traffic.run(self.trial_no, self.args.warmup)
        t = await task
        offered = sum(t.sent.values()) / self.args.warmup
        delivered = len(t.records) / self.args.warmup
        ratio = len(t.records) / max(1, sum(t.sent.values()))
        silent = [s.index for s in self.streams if not (t.records["stream"] == s.index).any()]
        say(f"[{self.label} N={self.n:,}] baseline: offered {offered:,.0f}/s, delivered {delivered:,.0f}/s "
            f"({ratio:.2%}), sender late max {t.late_max_ms:.1f} ms")
        if silent:
            raise RuntimeError(f"streams {silent[:10]} delivered nothing without any failure: the fabric is not carrying them")
        return {"offered": offered, "delivered": delivered, "delivered_ratio": ratio}

    async def _trial(self, kind: str, i: int) -> analysis.TrialResult:
        ctl, traffic, timeline, hops = self.ctl, self.traffic, self.timeline, self.hops
        assert ctl and traffic and timeline and hops and self.lab
        a = self.args
        plans = [ctl.fabric.plans[s.conn_id] for s in self.streams]
        target = scenario.choose(kind, plans, list(ctl.fabric.plans.values()))
        affected = {s.index for s, p in zip(self.streams, plans) if target.crossed_by(p)}
        self.fault = scenario.Fault(self.lab, ctl.fabric.graph.links, target)
        self.trial_no += 1
        timeline.clear()
        hops.clear()
        load_before = os.getloadavg()[0]
        start, task = await traffic.run(self.trial_no, a.warmup + a.post)
        await asyncio.sleep(max(0.0, (start - time.monotonic_ns()) / 1e9 + a.warmup))
        t_start, t_done = await self.fault.inject()
        t = await task
        end_ns = time.monotonic_ns()
        window = timeline.window(t_start, end_ns)
        await self.fault.restore()
        res = analysis.analyse(self.trial_no, target.element, self.streams, t, t_start, t_done, affected, window)
        res.collateral = sorted(window.declared_down - target.expected_down(ctl.fabric.graph.links))
        log.info("bench trial=%d kind=%s element=%s t_fail=%d rounds=%s graph=%s", self.trial_no, kind, target.element,
                 res.t_fail, [{k: v for k, v in r.items()} for r in window.rounds],
                 [((t - res.t_fail) / 1e6, sorted(l), sorted(s)) for t, l, s in timeline.graph])
        res.load = os.getloadavg()[0]
        res.load_before = load_before
        res.hops = hops.trial(res.t_fail, end_ns).by_hop
        hit = [s.loss_window_ms for s in res.affected]
        settled = await scenario.settle(ctl, SETTLE_TIMEOUT_S)
        say(f"[{self.label} {kind} N={self.n:,}] trial {i + 1}/{a.trials}: {target.element} "
            f"({len(affected)}/{len(self.streams)} tracked cross it): loss p50 {report.ms(report.pct(hit, 50))} "
            f"max {report.ms(max(hit, default=0))} ms, all delivering after {report.ms(res.all_restored_ms)} ms "
            f"(sent {report.ms(res.path_back_ms)}) "
            f"(detected {report.ms(res.detect_ms)} by {res.detected_by or '-'}, head-end acked "
            f"{report.ms(res.ack_ms)}, {res.rerouted} rerouted)"
            + (f"; ALSO declared down: {' '.join(res.collateral)}" if res.collateral else "")
            + f"; load {res.load_before:.1f} -> {res.load:.1f}; settled in {settled:.1f}s")
        return res

    async def close(self) -> None:
        """Everything this case started, whatever state it is in."""
        for burner in self.burners:
            burner.kill()
            burner.wait()
        if self.fault is not None:
            await in_thread(self.fault.undo_now)
        if self.traffic is not None:
            pids = self.traffic.pids
            try:
                await asyncio.wait_for(self.traffic.close(), 5)
            except (Exception, asyncio.CancelledError):
                for pid in pids:
                    kill(pid)
        if self.timeline is not None:
            await self.timeline.close()
        if self.hops is not None:
            await self.hops.close()
        if self.ctl is not None:
            try:
                await asyncio.wait_for(self.ctl.stop(), 10)
            except (Exception, asyncio.CancelledError):
                log.exception("controller stop failed")
        if self.lab is not None:
            await in_thread(self.lab.stop)


def notes(args: argparse.Namespace) -> list[str]:
    s = Settings.load(args.settings)
    return [
        "- Lab: `topologies/<topology>.yaml` in Mininet, every switch a `p4nsm-softswitch` process (rows whose "
        "topology ends in `-bmv2`: BMv2's `simple_switch_grpc` with p4c's build of p4/nsm_fabric.p4, "
        "`--switch bmv2`, each link a cable whose ends a port failure takes down); the controller "
        f"(`controller.runtime.Controller`) runs in the benchmark's process. Settings: probe_interval "
        f"{s.probe_interval * 1000:g} ms, probe_misses {s.probe_misses}, keepalive_interval "
        f"{s.keepalive_interval * 1000:g} ms, keepalive_timeout {s.keepalive_timeout * 1000:g} ms, probe_ingress_stamps "
        f"{s.probe_ingress_stamps}, probe_stamp_margin {s.probe_stamp_margin * 1000:g} ms"
        + (f", overrides {args.settings}" if args.settings else "") + ".",
        "- Connections: round-robin over host pairs whose shortest path crosses the core (diamond: h1, h2 to h3, h4; "
        "fattree4: the 4 hosts of pod 1 to the 12 hosts of the other pods). Streams: on all connections when N <= 100, "
        f"else on {args.tracked} spread evenly over the N; {RATE:g} frames/s each, the first at {FAST_RATE:g} frames/s; "
        "64-byte 802.1Q frames sent from AF_PACKET sockets by one process per source host namespace (frames "
        "pre-built, sequence number and send time patched in), captured by one process per destination namespace.",
        "- Failed element: the one most tracked connections cross on their active path at that moment (so "
        "successive trials alternate between the two halves of the fabric as connections move): cut = any link, "
        "both directions dropped by a tc eBPF program on egress, carrier stays up; port = the first link of the "
        "path, the head end's interface set down (its peer loses carrier); kill / freeze = a transit switch, "
        "SIGKILL / SIGSTOP. Restored after the stream (mend, port up, restart, SIGCONT); the next trial waits until "
        "every switch is ready, every link up for longer than the flap window, every connection up with a live backup.",
        f"- Loss window: per affected stream, the largest run of lost sequence numbers not over before the failure, "
        f"times the stream's interval ({1000 / RATE:g} ms at {RATE:g} frames/s, so resolution is one interval); "
        "p50/p99/max pool every affected stream of every trial. All delivering again: per trial, failure -> the "
        "first frame after its gap of the slowest affected stream (receive time in user space); p50/p99/max over "
        "trials. *Loss on the send clock* is the same gap measured by the send times of the frames around it.",
        "- Failure instant (time 0 of every figure): the send time of the first frame lost, i.e. the earliest "
        "start of a lost run among the affected streams (the frame before it plus one interval: 1 ms with the "
        "1,000 frames/s stream), kept within the injecting call (cut: `lab.faults.cut` of the link's "
        "upstream end, the reverse direction is cut right after; port: `Lab.set_port_up`; kill/freeze: the "
        "signal, which is exact); the end of that call when no frame was lost. The pyroute2 calls take a few ms "
        "(*inject* in the details), which would otherwise count against the controller.",
        "- Streams and protection groups: with `fast_failover` the head end spreads a connection's frames over "
        "its primary and backup legs by a hash of the MAC addresses; each tracked stream's source MAC is chosen "
        "so that it hashes onto the primary member (benchmarks/heal/traffic.py), i.e. onto the leg that fails.",
    ]


CPU_REFERENCE = "sum(range(3*10**7))"


def cpu_reference() -> float:
    """Seconds this machine takes for CPU_REFERENCE in a fresh interpreter, now: how fast (or how
    shared) the CPU is, to read the figures beside another machine's."""
    code = f"import time; t = time.perf_counter(); {CPU_REFERENCE}; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def machine(cpu_s: float) -> str:
    return (f"Machine: {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}; "
            f"`python3 -c \"{CPU_REFERENCE}\"` in {cpu_s:.2f} s; load average at the start {os.getloadavg()[0]:.2f}. "
            "Everything (switches, controller, traffic) shares these CPUs, and other work on the machine makes the "
            "figures worse.")


def write_results(new_rows: list[dict], args: argparse.Namespace) -> None:
    md = RESULTS / "heal.md"
    rows = report.load(md)
    rows.update({report.key(r): r for r in new_rows})
    RESULTS.mkdir(parents=True, exist_ok=True)
    kept = report.notes_after(md)
    md.write_text(report.markdown(rows, machine(args.cpu_s), notes(args)) + ("\n" + kept if kept else ""))
    for topo, kind in sorted({(r["topology"], r["failure"]) for r in rows.values()}):
        plot.draw([r for r in rows.values() if (r["topology"], r["failure"]) == (topo, kind)],
                  RESULTS / f"heal_{topo}_{kind}.png")
    say(f"wrote {md.relative_to(REPO)} and its figures")


async def run_once(args: argparse.Namespace, write: bool) -> list[dict]:
    rows: list[dict] = []
    for topo in args.topologies:
        for n in args.n:
            run_dir = Path(tempfile.mkdtemp(prefix=f"p4nsm-heal-{topo}-{n}-"))
            case = Case(args, topo, n, run_dir)
            try:
                await case.run()
            finally:
                for row in case.rows:
                    row["cpu_s"] = args.cpu_s
                rows += case.rows
                if case.rows:
                    say(report.console_table(case.rows))
                    say(report.hop_table(case.rows))
                    if write:
                        write_results(case.rows, args)
            shutil.rmtree(run_dir, ignore_errors=True)
    return rows


async def run_all(args: argparse.Namespace) -> list[dict]:
    """One run, written case by case; or `--runs` of them, apart by `--runs-gap`, written at the
    end as the worst of them with their spread."""
    if args.runs == 1:
        return await run_once(args, not args.no_write)
    runs = []
    for i in range(args.runs):
        if i:
            say(f"waiting {args.runs_gap:.0f}s before run {i + 1} (figures taken at different moments)")
            await asyncio.sleep(args.runs_gap)
        args.cpu_s = await asyncio.to_thread(cpu_reference)
        say(f"=== run {i + 1}/{args.runs}: CPU reference {args.cpu_s:.2f} s; load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        runs.append(await run_once(args, False))
    rows = report.worst_of(runs)
    say("\nworst of the runs:")
    say(report.console_table(rows))
    if not args.no_write:
        write_results(rows, args)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--topology", default="diamond", help="comma-separated: diamond, fattree4")
    p.add_argument("--n", default="1,100", help="comma-separated connection counts")
    p.add_argument("--trials", type=int, help="trials per failure and N (default 20; 2 with --quick)")
    p.add_argument("--failures", default=",".join(scenario.KINDS), help="comma-separated: cut,port,kill,freeze")
    p.add_argument("--tracked", type=int, default=TRACKED,
                   help="streams at most (sampled over the N); fewer than 100 is below what the issue asks, and the report says so")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of traffic before the failure")
    p.add_argument("--post", type=float, default=2.0, help="seconds of traffic after it")
    p.add_argument("--switch", choices=["softswitch", "bmv2"], default="softswitch",
                   help="what runs every switch: p4nsm-softswitch, or BMv2's simple_switch_grpc (needs it and p4c on PATH)")
    p.add_argument("--quick", action="store_true", help="smoke run: diamond, N=1, 2 trials, short streams, nothing written")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                   help="controller setting override (repeatable), e.g. fast_failover=true")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--final", action="store_true",
                   help="alone: the README's headline rows, worst of 3 runs of 10 trials, diamond N=100 (cut, kill, port; "
                        "cut beside two `yes`)")
    p.add_argument("--runs", type=int, default=1,
                   help="run everything this many times and report the worst run of each case, with the spread (the README's headline rows: 3)")
    p.add_argument("--burners", type=int, default=0,
                   help="run this many `yes > /dev/null` beside the benchmark (rows labelled TOPOLOGY+Kyes)")
    p.add_argument("--runs-gap", type=float, default=60.0, help="seconds between runs with --runs")
    args = p.parse_args(argv)
    if args.final:
        p.error("--final runs its own set (FINAL) and takes no other arguments")
    args.command = " ".join([".venv/bin/python", "benchmarks/bench_heal.py", *(argv if argv is not None else sys.argv[1:])])
    if args.quick:
        args.n, args.warmup, args.post, args.no_write = "1", 0.5, 1.0, True
    args.trials = args.trials or (2 if args.quick else 20)
    args.topologies = args.topology.split(",")
    args.n = [int(x) for x in str(args.n).split(",")]
    args.failures = args.failures.split(",")
    bad = set(args.failures) - set(scenario.KINDS)
    if bad:
        p.error(f"unknown failures {sorted(bad)}; choose from {', '.join(scenario.KINDS)}")
    args.settings = dict(s.split("=", 1) for s in args.settings)
    return args


def _terminated(signum: int, frame: object) -> None:
    say(f"received {signal.Signals(signum).name} from outside; stopping")
    raise KeyboardInterrupt


# The README's headline rows (issue 16), one command: `bench_heal.py --final`.
FINAL = [
    ["--topology", "diamond", "--n", "100", "--trials", "10", "--failures", "cut,kill,port", "--runs", "3"],
    ["--topology", "diamond", "--n", "100", "--trials", "10", "--failures", "cut", "--runs", "3", "--burners", "2"],
]


def main() -> int:
    if sys.argv[1:] == ["--final"]:
        for argv in FINAL:
            say(f"=== bench_heal.py {' '.join(argv)}")
            code = subprocess.run([sys.executable, __file__, *argv]).returncode
            if code:
                return code
        return 0
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: Mininet, network namespaces, raw sockets")
    log_path = Path(tempfile.gettempdir()) / f"p4nsm-heal-{os.getpid()}.log"
    logging.basicConfig(filename=log_path, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    say(f"controller and lab log: {log_path}")
    args.cpu_s = cpu_reference()
    say(f"CPU reference: {CPU_REFERENCE} in {args.cpu_s:.2f} s; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    # SIGTERM ends the run like Ctrl-C: through the cleanup of every case.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        rows = asyncio.run(run_all(args))
    except KeyboardInterrupt:
        say("interrupted; the lab and every process started were stopped")
        return 130
    if args.runs == 1:
        say("")
        say(report.console_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
