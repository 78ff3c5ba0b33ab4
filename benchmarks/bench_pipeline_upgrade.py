"""Pipeline upgrade under traffic: roll a new revision of the P4 program out over the softswitch
diamond while every connection carries a sequence-numbered stream.

    sudo flock /tmp/p4nsm-e2e.lock .venv/bin/python benchmarks/bench_pipeline_upgrade.py \
        [--n 100] [--trials 10] [--rejected 10] [--rate 100] [--quick]

The lab runs on free loopback ports (never the topology file's), plaintext. N connections
between h1/h2 and h3/h4, one stream each (a -> b). Each trial publishes a revision the switches
accept (the shipped P4Info with other table sizes, every other trial also with an added table)
through the rollout's own entry point (`Controller.pipeline.apply`, what `p4nsm pipeline apply`
calls), which commits it switch by switch. Every lost frame is charged to the switch whose commit
was the latest to start before the frame was sent; a connection "could avoid" a switch when
neither of its hosts hangs off it (on diamond: s2 and s3 for every connection; s1 and s4 carry
every connection's hosts). Then revisions every switch rejects (an action the model does not
know): the time until the revision is tainted and the frames lost meanwhile.

Streams, receivers and the loss accounting are the heal benchmark's (benchmarks/heal).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from google.protobuf import text_format

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.heal import report, scenario  # noqa: E402
from benchmarks.heal.traffic import Stream, Traffic, TrialTraffic  # noqa: E402
from controller.runtime import Controller  # noqa: E402
from controller.settings import Settings  # noqa: E402
from controller.topology import host_ifname, load_topology  # noqa: E402
from lab.harness import Lab  # noqa: E402
from tests.e2e.topology import with_free_ports  # noqa: E402
from tests.support import revisions as R  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "pipeline_upgrade.md"
RESULTS_NO_RECONCILE = REPO / "benchmarks" / "results" / "pipeline_upgrade_no_reconcile.md"
LABEL_FWD = "FabricIngress.label_fwd"
LEAD_S = 1.0  # streams run this long before the rollout starts ...
TAIL_S = 1.5  # ... and at least this long after it ends
FIRST_STREAM_S = 8.0  # the first trial's stream; later ones are sized on the slowest rollout so far
READY_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 180.0
COMMITS = {"VERIFY_AND_COMMIT", "RECONCILE_AND_COMMIT", "COMMIT"}

log = logging.getLogger("p4nsm.bench.pipeline")


def say(text: str) -> None:
    print(text, flush=True)


@dataclasses.dataclass
class Trial:
    number: int
    revision: str
    state: str
    rollout_s: float
    write_updates: int
    write_rpcs: int
    pipeline_rpcs: int
    commits: list[tuple[str, str, int]]  # (switch, drain or commit action, start ns) in the order they started
    taken: list[tuple[str, str]]  # the commit calls the switches took: (switch, action)
    avoidable_lost: dict[str, int]  # switch -> frames lost by connections that could avoid it
    windows_ms: dict[str, list[float]]  # switch -> per connection that could not avoid it: frames lost x interval
    other_lost: int  # lost before the first commit (the VERIFY round, the first drain)
    avoidable_at: list[tuple[str, int, float]]  # (switch, stream, ms after its turn began) of each such loss
    failures: list[str]  # the rollout's answers that were not ok, and its last note
    kernel_drops: int  # softnet backlog drops during the trial (any interface of the machine)
    downs: list[str]  # links or switches declared down during the trial (false downs: nothing failed)
    total_lost: int  # every frame any stream lost in the trial
    stream_short: bool  # the stream ended before the rollout plus TAIL_S: losses after it unseen


class Recorder:
    """What the rollout does to the switches: when each switch's turn began (its drain, seen
    through the fabric's graph listeners, or else its first commit call), the commit calls and
    whether each was taken (the clients' own method, wrapped), and Write RPCs (their listeners)."""

    def __init__(self, ctl: Controller) -> None:
        self.commits: list[tuple[str, str, int]] = []  # (switch, "drain" or the commit action, ns)
        self.taken: list[tuple[str, str]] = []  # (switch, action) of the commit calls that succeeded
        self.updates = 0
        self.rpcs = 0
        self.downs: set[str] = set()
        self._graph = ctl.fabric.graph
        self._drained: set[str] = set()
        ctl.fabric.graph_listeners.append(self._on_graph)
        for client in ctl.clients.values():
            client.write_listeners.append(self._on_write)
            self._wrap(client)

    def _on_graph(self) -> None:
        # A link or switch declared down meanwhile (a stalled switch on a loaded machine): its
        # heal, not the rollout, moves traffic; the trial is marked.
        self.downs |= self._graph.down_links | self._graph.down_switches
        now = set(self._graph.drained_switches)
        for switch in sorted(now - self._drained):
            self.commits.append((switch, "drain", time.monotonic_ns()))
        self._drained = now

    def _wrap(self, client) -> None:  # type: ignore[no-untyped-def]
        inner = client.set_pipeline

        async def set_pipeline(action, target):  # type: ignore[no-untyped-def]
            from finsy.proto import p4r

            name = p4r.SetForwardingPipelineConfigRequest.Action.Name(action)
            if name not in COMMITS:
                return await inner(action, target)
            self.commits.append((client.name, name, time.monotonic_ns()))
            result = await inner(action, target)
            self.taken.append((client.name, name))
            return result

        client.set_pipeline = set_pipeline

    def _on_write(self, client, updates: int, failed, elapsed: float) -> None:  # type: ignore[no-untyped-def]
        self.updates += updates
        self.rpcs += 1

    def clear(self) -> None:
        self.downs.clear()
        self.commits.clear()
        self.taken.clear()
        self.updates = self.rpcs = 0


def kernel_drops() -> int:
    """Frames the kernel dropped because a CPU's input backlog was full (/proc/net/softnet_stat,
    second column, summed over CPUs): veth hands a frame to its peer through that backlog, so a
    burst from a switch that stalled is dropped there, before any switch sees it."""
    with open("/proc/net/softnet_stat") as f:
        return sum(int(line.split()[1], 16) for line in f if line.strip())


def lost_send_times(stream: Stream, records: np.ndarray, sent: int) -> np.ndarray:
    """When each lost frame of a stream was sent (CLOCK_MONOTONIC ns), from its received
    neighbours: the sender paces frames one interval apart."""
    rec = records[(records["stream"] == stream.index) & (records["seq"] < sent)]
    if sent == 0:
        return np.zeros(0, dtype=np.int64)
    tx = np.full(sent, -1, dtype=np.int64)
    tx[rec["seq"]] = rec["tx"].astype(np.int64)
    missing = np.flatnonzero(tx < 0)
    if not len(missing):
        return np.zeros(0, dtype=np.int64)
    have = np.flatnonzero(tx >= 0)
    if not len(have):
        return np.zeros(len(missing), dtype=np.int64)  # nothing arrived: charged to nobody's commit
    period = int(1e9 / stream.rate)
    before = np.searchsorted(have, missing) - 1
    anchor = have[np.clip(before, 0, len(have) - 1)]
    return tx[anchor] + (missing - anchor) * period


def charge(trial_traffic: TrialTraffic, streams: list[Stream], ends: dict[str, set[str]],
           commits: list[tuple[str, str, int]]
           ) -> tuple[dict[str, int], dict[str, list[float]], int, list[tuple[str, int, float]]]:
    """Lost frames per commit: (avoidable per switch, windows per switch, other, where each
    avoidable loss fell)."""
    commits = sorted(commits, key=lambda c: c[2])
    starts = np.array([t for _, _, t in commits], dtype=np.int64)
    switches = [s for s, _, _ in commits]
    avoidable = dict.fromkeys(switches, 0)
    windows: dict[str, list[float]] = {s: [] for s in switches}
    other = 0
    turn_start: dict[str, int] = {}
    for switch, _, t in commits:
        turn_start.setdefault(switch, t)
    at: list[tuple[str, int, float]] = []
    for stream in streams:
        times = lost_send_times(stream, trial_traffic.records, trial_traffic.sent.get(stream.index, 0))
        which = np.searchsorted(starts, times, side="right") - 1 if len(starts) else np.full(len(times), -1)
        other += int((which < 0).sum())
        lost_at = dict.fromkeys(switches, 0)  # a switch's drain and commit are one turn
        for i, switch in enumerate(switches):
            lost_at[switch] += int((which == i).sum())
        for t, i in zip(times, which):
            if i >= 0 and switches[i] not in ends[stream.conn_id]:
                at.append((switches[i], stream.index, (int(t) - turn_start[switches[i]]) / 1e6))
        for switch, n in lost_at.items():
            if switch in ends[stream.conn_id]:
                windows[switch].append(n * stream.period_ms)
            else:
                avoidable[switch] += n
    return avoidable, windows, other, at


def revision_text(info) -> str:  # type: ignore[no-untyped-def]
    return text_format.MessageToString(info)


CONFIGS = {"softswitch": base64.b64encode(R.SOFTSWITCH_CONFIG).decode()}


class OptionsLab(Lab):
    """The lab with options added to every softswitch's command line (the harness has no hook
    for that: lab.harness builds the commands in _switch_commands)."""

    def __init__(self, *args, switch_options: list[str], **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.switch_options = switch_options

    def _switch_commands(self) -> dict[str, list[str]]:
        return {name: [*argv, *self.switch_options] for name, argv in super()._switch_commands().items()}


class Bench:
    def __init__(self, args: argparse.Namespace, run_dir: Path) -> None:
        self.args = args
        self.run_dir = run_dir
        self.topo = with_free_ports(load_topology(REPO / "topologies" / "diamond.yaml"))
        self.lab: Lab | None = None
        self.ctl: Controller | None = None
        self.traffic: Traffic | None = None
        self.streams: list[Stream] = []
        self.ends: dict[str, set[str]] = {}
        self.stream_s = FIRST_STREAM_S
        self.trial_no = 0

    async def setup(self) -> None:
        say(f"[diamond N={self.args.n}] starting the lab on free ports")
        self.lab = OptionsLab(self.topo, self.run_dir, tls=False,
                              switch_options=["--no-reconcile"] if self.args.no_reconcile else [])
        await asyncio.to_thread(self.lab.start)
        settings = Settings.load({"metrics_address": "127.0.0.1:0", "web_address": "127.0.0.1:0",
                                  "store_path": str(self.run_dir / "upgrade.sqlite"), **dict(self.args.set)})
        self.ctl = Controller(self.topo, settings)
        self.recorder = Recorder(self.ctl)
        await self.ctl.start()
        if not await self.ctl.wait_ready(READY_TIMEOUT_S):
            raise RuntimeError("the switches did not become ready")
        pairs = scenario.host_pairs(self.topo)
        plans = await scenario.connect_all(self.ctl, pairs, self.args.n, say)
        self.streams = [Stream(k, p.id, p.a.host, p.b.host, p.a.vlan, self.args.rate) for k, p in enumerate(plans)]
        self.ends = {p.id: {p.a.switch, p.b.switch} for p in plans}
        self.traffic = Traffic(self.streams, {h.name: host_ifname(h.name) for h in self.topo.hosts}, self.run_dir)
        await self.traffic.start()
        await scenario.settle(self.ctl, SETTLE_TIMEOUT_S)
        say(f"[diamond N={self.args.n}] {len(self.streams)} streams at {self.args.rate:.0f} frames/s each; settled")

    async def baseline(self) -> int:
        """Frames the lab loses without any rollout, over one stream of a trial's length: what a
        loaded machine drops anyway (a socket buffer that overflowed), to read the trials by."""
        assert self.traffic is not None
        self.trial_no += 1
        drops_before = kernel_drops()
        _, task = await self.traffic.run(self.trial_no, self.stream_s)
        done = await task
        lost = sum(len(lost_send_times(s, done.records, done.sent.get(s.index, 0))) for s in self.streams)
        say(f"[baseline {self.trial_no}] {lost} frames lost of {sum(done.sent.values())} sent, no rollout; "
            f"kernel backlog drops {kernel_drops() - drops_before}")
        return lost

    async def trial(self, info, label: str) -> Trial:  # type: ignore[no-untyped-def]
        ctl, traffic = self.ctl, self.traffic
        assert ctl is not None and traffic is not None
        self.trial_no += 1
        self.recorder.clear()
        pipeline_before = sum(c.pipeline_rpcs for c in ctl.clients.values())
        drops_before = kernel_drops()
        start_ns, task = await traffic.run(self.trial_no, self.stream_s)
        await asyncio.sleep(LEAD_S)
        t0 = time.monotonic()
        outcome = await ctl.pipeline.apply(revision_text(info), CONFIGS, "bench_pipeline_upgrade")
        rollout_s = time.monotonic() - t0
        stream_end_s = (start_ns - time.monotonic_ns()) / 1e9 + self.stream_s
        short = stream_end_s < TAIL_S
        done = await task
        drops = kernel_drops() - drops_before
        self.stream_s = max(self.stream_s, LEAD_S + 1.5 * rollout_s + TAIL_S)
        avoidable, windows, other, at = charge(done, self.streams, self.ends, list(self.recorder.commits))
        failures = [f"{a['switch']} {a['step']}: {a.get('code')} {a.get('message')}" for a in outcome.get("answers", [])
                    if not a.get("ok")]
        if outcome.get("state") != "in_sync" and outcome.get("history"):
            failures.append(str(outcome["history"][-1].get("note", "")))
        result = Trial(self.trial_no, outcome.get("id", "?")[:12], outcome.get("state", "?"), rollout_s,
                       self.recorder.updates, self.recorder.rpcs,
                       sum(c.pipeline_rpcs for c in ctl.clients.values()) - pipeline_before,
                       list(self.recorder.commits), list(self.recorder.taken), avoidable, windows, other, at, failures, drops,
                       sorted(self.recorder.downs),
                       sum(len(lost_send_times(s, done.records, done.sent.get(s.index, 0))) for s in self.streams),
                       short)
        all_windows = [w for ws in windows.values() for w in ws]
        say(f"[{label} {self.trial_no}] {result.state} in {rollout_s:.2f}s; commits "
            f"{' '.join(f'{s}:{a}' for s, a in result.taken) or '-'}; lost by connections that could avoid "
            f"the switch: {avoidable}; windows of those that could not: p50 {report.ms(report.pct(all_windows, 50))} "
            f"p99 {report.ms(report.pct(all_windows, 99))} ms; other lost {other}; writes {result.write_updates} "
            f"updates in {result.write_rpcs} RPCs; {result.pipeline_rpcs} SetForwardingPipelineConfig"
            + f"; kernel backlog drops {drops}"
            + (f"; DECLARED DOWN (nothing failed): {sorted(self.recorder.downs)}" if self.recorder.downs else "")
            + ("; STREAM ENDED TOO EARLY" if short else "")
            + (f"; avoidable losses (switch, stream, ms into its turn): {at[:10]}" if at else "")
            + (f"; rollout problems: {failures}" if failures and label == "accepted" else ""))
        await scenario.settle(ctl, SETTLE_TIMEOUT_S)
        return result

    async def close(self) -> None:
        if self.traffic is not None:
            await self.traffic.close()
        if self.ctl is not None:
            await self.ctl.stop()
        if self.lab is not None:
            await asyncio.to_thread(self.lab.stop)


def accepted_revision(i: int):  # type: ignore[no-untyped-def]
    """A distinct revision per trial (a revision already in sync is not rolled out again)."""
    info = R.resized({LABEL_FWD: 16384 + 1024 * i})
    return R.with_added_table(info) if i % 2 else info


def rejected_revision(i: int):  # type: ignore[no-untyped-def]
    return R.with_unknown_action(R.resized({LABEL_FWD: 8192 + i}))


def summary(accepted: list[Trial], rejected: list[Trial], baseline: list[int], stream_s: float,
            args: argparse.Namespace) -> str:
    windows = [w for t in accepted for s, ws in t.windows_ms.items() for w in ws]
    avoid_total = sum(n for t in accepted for n in t.avoidable_lost.values())
    avoid_pairs = sum(len({s for s, _ in t.taken}) for t in accepted)
    rollouts = [t.rollout_s for t in accepted]
    taint = [t.rollout_s for t in rejected]
    lost_rejected = [t.total_lost for t in rejected]
    modes = sorted({a for t in accepted for _, a in t.taken})
    lines = [
        "# Pipeline upgrade under traffic",
        "",
        f"Measured by `sudo flock /tmp/p4nsm-e2e.lock .venv/bin/python benchmarks/bench_pipeline_upgrade.py "
        f"--n {args.n} --trials {args.trials} --rejected {args.rejected} --rate {args.rate:g}"
        f"{' --no-reconcile' if args.no_reconcile else ''}` on {platform.node()}: "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}; "
        f"load average {os.getloadavg()[0]:.2f} after (the machine is shared).",
        "",
        f"Softswitch diamond (free ports), N={args.n} connections h1/h2 -> h3/h4, one {args.rate:g} frames/s stream "
        "each. Accepted revisions: the shipped P4Info with label_fwd resized (every other trial also with an added "
        "table), rolled out with `Controller.pipeline.apply`. "
        + ("The softswitches run with `--no-reconcile` (RECONCILE_AND_COMMIT answered UNIMPLEMENTED, as BMv2 and "
           "Stratum answer it), so every commit starts empty until the switch is rewritten. " if args.no_reconcile else "")
        + f"Commit actions the switches took: {', '.join(modes) or 'none'}.",
        "",
        "| trial | outcome | rollout s | lost, could avoid (s2/s3: target 0) | window p50 / p99 / max ms, could not (s1/s4) | other lost | kernel backlog drops | Write updates / RPCs | SetForwardingPipelineConfig |",
        "|---:|---|---:|---|---|---:|---:|---|---:|",
    ]
    for t in accepted:
        ws = [w for v in t.windows_ms.values() for w in v]
        lines.append(f"| {t.number} | {t.state}{' (stream short)' if t.stream_short else ''} | {t.rollout_s:.2f} | "
                     f"{', '.join(f'{s} {n}' for s, n in t.avoidable_lost.items()) or '-'} | "
                     f"{report.ms(report.pct(ws, 50))} / {report.ms(report.pct(ws, 99))} / {report.ms(max(ws, default=0))} | "
                     f"{t.other_lost} | {t.kernel_drops} | {t.write_updates} / {t.write_rpcs} | {t.pipeline_rpcs} |")
        if t.failures or t.downs:
            lines.append(f"| | {'rollout problems: ' + '; '.join(t.failures) if t.failures else ''}"
                         f"{' declared down meanwhile, nothing failed: ' + ', '.join(t.downs) if t.downs else ''}"
                         " | | | | | | | |")
    lines += [
        "",
        f"**Accepted, {len(accepted)} trials:** frames lost by connections that could avoid the switch being "
        f"committed: **{avoid_total}** in total over {avoid_pairs} commits (target 0); loss window of connections that "
        f"could not (per connection and commit of its own host's switch, {len(windows)} of them): "
        f"p50 **{report.ms(report.pct(windows, 50))} ms**, p99 **{report.ms(report.pct(windows, 99))} ms**; rollout "
        f"p50 {report.ms(report.pct([r * 1000 for r in rollouts], 50))} ms, max {report.ms(max(rollouts, default=0) * 1000)} ms.",
        "",
        "| rejected trial | outcome | time to taint ms | frames lost | SetForwardingPipelineConfig | declared down meanwhile (nothing failed) |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for t, lost in zip(rejected, lost_rejected):
        lines.append(f"| {t.number} | {t.state} | {t.rollout_s * 1000:.0f} | {lost:g} | {t.pipeline_rpcs} | "
                     f"{', '.join(t.downs) or '-'} |")
    lines += [
        "",
        f"Baseline (the same streams for {stream_s:.0f} s, no rollout), before and after the trials: "
        f"{' and '.join(str(n) for n in baseline)} frames lost of ~{args.n * args.rate * stream_s:,.0f} sent: what this "
        "machine drops anyway, to read single lost frames in the trials by.",
        "",
        f"**Rejected everywhere, {len(rejected)} trials:** time to taint p50 "
        f"{report.ms(report.pct([x * 1000 for x in taint], 50))} ms, max {report.ms(max(taint, default=0) * 1000)} ms; "
        f"frames lost {sum(lost_rejected):g} in total (target 0).",
        "",
        "A lost frame is charged to the switch whose turn (its drain, else its commit) started last before the frame "
        "was sent (its send time interpolated from its received neighbours); 'other' are losses before the first "
        "turn (the VERIFY round). A window is frames lost x the stream's interval, per connection and switch.",
    ]
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    bench = Bench(args, run_dir)
    accepted: list[Trial] = []
    rejected: list[Trial] = []
    baseline: list[int] = []
    try:
        await bench.setup()
        baseline.append(await bench.baseline())
        for i in range(args.trials):
            accepted.append(await bench.trial(accepted_revision(i + 1), "accepted"))
        for i in range(args.rejected):
            rejected.append(await bench.trial(rejected_revision(i + 1), "rejected"))
        baseline.append(await bench.baseline())
    finally:
        await bench.close()
    text = summary(accepted, rejected, baseline, bench.stream_s, args)
    say(text)
    if args.write:
        path = RESULTS_NO_RECONCILE if args.no_reconcile else RESULTS
        path.write_text(text)
        say(f"written to {path.relative_to(REPO)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100, help="connections, one stream each")
    p.add_argument("--trials", type=int, default=10, help="accepted revisions rolled out")
    p.add_argument("--rejected", type=int, default=10, help="revisions every switch rejects")
    p.add_argument("--rate", type=float, default=100.0, help="frames/s per stream")
    p.add_argument("--no-reconcile", action="store_true",
                   help="softswitches that refuse RECONCILE_AND_COMMIT (as BMv2): the window of a commit that empties")
    p.add_argument("--quick", action="store_true", help="N=10, 2 trials of each: a smoke run, not written")
    p.add_argument("--no-write", dest="write", action="store_false", help="print only; leave the results file")
    p.add_argument("--set", type=lambda s: tuple(s.split("=", 1)), action="append", default=[], metavar="NAME=VALUE",
                   help="a controller setting")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.trials, args.rejected, args.write = 10, 2, 2, False
    return args


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if os.geteuid() != 0:
        sys.exit("needs root (Mininet, network namespaces): run it with sudo, under the e2e lock")
    asyncio.run(main_async(parse_args()))


if __name__ == "__main__":
    main()
