"""Summaries of the trials of one (topology, failure, N), the console table, and heal.md.

heal.md is rebuilt from every summary measured so far: they travel inside it as JSON in an
HTML comment, so that runs of different sizes (diamond today, fattree4 N=10,000 later) end up
in one file without a second results file.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections import Counter
from pathlib import Path

from benchmarks.heal.analysis import BIN_MS, SERIES_BEFORE_MS, TrialResult
from benchmarks.heal.hops import HOPS

NAMES = {"cut": "silent link cut", "port": "port down", "kill": "switch killed (SIGKILL)", "freeze": "switch frozen (SIGSTOP)"}
# (metric, limit in ms, N it is stated for) from the issue
TARGETS = {"cut": ("loss p50", 50.0, 100), "port": ("loss p50", 10.0, None), "kill": ("loss p50", 50.0, None),
           "freeze": ("loss p50", 250.0, None)}
RESTORE_TARGET = ("all delivering p50", 1000.0, 10_000)
# beside CPU burners (`--burners`, rows TOPOLOGY+Kyes): a silent cut within this, and no healthy
# element declared down in any trial
BURNERS_CUT_TARGET = 100.0
CUT_P99_TARGET = 100.0  # a silent cut's loss p99 (at the N its p50 target is stated for)
DATA = re.compile(r"<!-- heal-data\n(.*?)\n-->", re.S)


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (an observed value, never an interpolation)."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    return vals[max(0, math.ceil(q / 100 * len(vals)) - 1)]


def mechanism(detected_by: str) -> str:
    if not detected_by:
        return "not detected"
    if detected_by.startswith("probes"):
        return "missed probes"
    reason = re.sub(r"^switch \S+: ", "", detected_by.split("(", 1)[-1].rstrip(")"))  # the client's prefix
    return f"session lost ({reason.split(':')[0][:40]})"


def summarise(topology: str, kind: str, n: int, trials: list[TrialResult], tracked: int, mode: str,
              command: str, baseline: dict[str, float]) -> dict:
    loss = [s.loss_window_ms for t in trials for s in t.affected]
    fast = [s.loss_window_ms for t in trials for s in t.affected if s.rate >= 1000]
    send_gap = [s.send_gap_ms for t in trials for s in t.affected]
    restore = [t.all_restored_ms for t in trials]
    rep = sorted(trials, key=lambda t: t.all_restored_ms)[(len(trials) - 1) // 2]
    return {
        "topology": topology, "failure": kind, "n": n, "trials": len(trials), "tracked": tracked,
        "affected": sum(len(t.affected) for t in trials) / max(1, len(trials)),
        "elements": sorted({t.element for t in trials}), "mode": mode, "command": command,
        "date": datetime.date.today().isoformat(),
        "loss": [pct(loss, 50), pct(loss, 99), pct(loss, 100)],
        "loss_fast": [pct(fast, 50), pct(fast, 100)],
        "send_gap_p50": pct(send_gap, 50),
        "restore": [pct(restore, 50), pct(restore, 99), pct(restore, 100)],
        "path_back": [pct([t.path_back_ms for t in trials], 50), pct([t.path_back_ms for t in trials], 100)],
        "not_restored": sum(1 for r in restore if math.isinf(r)),
        "detect": [pct([t.detect_ms for t in trials], 50), pct([t.detect_ms for t in trials], 100)],
        "detected_by": [f"{k} ×{v}" for k, v in Counter(mechanism(t.detected_by) for t in trials).most_common()],
        "ack": [pct([t.ack_ms for t in trials], 50), pct([t.ack_ms for t in trials], 100)],
        "round": pct([t.round_ms for t in trials], 50),
        "rerouted_at": pct([t.rerouted_ms for t in trials], 50),
        "rerouted": pct([float(t.rerouted) for t in trials], 50),
        "inject": pct([t.inject_ms for t in trials], 50),
        "late_max": max(t.late_max_ms for t in trials),
        "collateral": sum(1 for t in trials if t.collateral),
        "load_max": max(t.load for t in trials),
        "loads": [round(max(t.load_before, t.load), 2) for t in trials],
        "hops": {h: [pct(v, 50), pct(v, 99), len(v)] for h in HOPS if (v := [x for t in trials for x in t.hops.get(h, [])])},
        "offered": sum(t.offered_pps for t in trials) / len(trials),
        "delivered": sum(t.delivered_pps for t in trials) / len(trials),
        "baseline": baseline,
        "rep": {"trial": rep.trial, "element": rep.element, "detect": rep.detect_ms, "ack": rep.ack_ms,
                "restore": rep.all_restored_ms, "series": rep.series, "bin_ms": BIN_MS, "from_ms": -SERIES_BEFORE_MS},
    }


def worst_of(runs: list[list[dict]]) -> list[dict]:
    """Rows of several runs of the same cases as one row per case: the run with the worst loss
    p50 gives the figures, every run its own line in `runs` (the spread)."""
    by_key: dict[str, list[dict]] = {}
    for rows in runs:
        for r in rows:
            by_key.setdefault(key(r), []).append(r)
    out = []
    for rows in by_key.values():
        worst = dict(max(rows, key=lambda r: r["loss"][0] if r["loss"][0] is not None else -1.0))
        worst["runs"] = [{"loss": r["loss"], "detect": r["detect"][0], "ack": r["ack"][0], "loads": r.get("loads", []),
                          "cpu_s": r.get("cpu_s"), "collateral": r.get("collateral", 0)} for r in rows]
        worst["collateral"] = sum(r.get("collateral", 0) for r in rows)
        out.append(worst)
    return out


def spread(row: dict) -> str:
    """The loss p50 of each run, lowest - highest (runs), or "" for a single run."""
    p50s = [r["loss"][0] for r in row.get("runs", []) if r["loss"][0] is not None]
    if len(p50s) < 2:
        return ""
    return f"{ms(min(p50s))} – {ms(max(p50s))} ({len(p50s)} runs)"


def ms(v: float | None) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "never"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"


def target_of(row: dict) -> tuple[str, str]:
    """(target text, verdict) for the row; verdict is "" where no target applies."""
    if row["n"] >= RESTORE_TARGET[2]:
        limit = RESTORE_TARGET[1]
        got = row["restore"][0]
        return f"all ≤ {limit:,.0f} ms", "met" if got is not None and got <= limit else "missed"
    _, limit, at_n = TARGETS[row["failure"]]
    if "yes" in row["topology"].rsplit("+", 1)[-1] and "+" in row["topology"] and row["failure"] == "cut":
        got = row["loss"][0]
        met = got is not None and got <= BURNERS_CUT_TARGET and not row.get("collateral")
        return (f"p50 ≤ {BURNERS_CUT_TARGET:.0f} ms, no healthy element down (N={at_n})",
                "met" if met else f"missed ({row.get('collateral', 0)} trials with one down)" if got is not None and got <= BURNERS_CUT_TARGET else "missed")
    p99 = CUT_P99_TARGET if row["failure"] == "cut" else None
    text = f"p50 ≤ {limit:.0f} ms" + (f", p99 ≤ {p99:.0f} ms" if p99 else "") + (f" (N={at_n})" if at_n else "")
    if at_n is not None and row["n"] != at_n:
        return text, ""
    got, got99 = row["loss"][0], row["loss"][1]
    met = got is not None and got <= limit and (p99 is None or (got99 is not None and got99 <= p99))
    return text, "met" if met else "missed"


def console_table(rows: list[dict]) -> str:
    head = f"{'topology':12s} {'failure':7s} {'N':>6s} {'trials':>6s} {'loss p50/p99/max ms':>22s} " \
           f"{'1k-pps loss':>11s} {'all deliver p50/p99/max ms':>27s} {'detect':>7s} {'ack':>7s}  target  spread of loss p50"
    out = [head, "-" * len(head)]
    for r in rows:
        text, verdict = target_of(r)
        out.append(f"{r['topology']:12s} {r['failure']:7s} {r['n']:>6,} {r['trials']:>6} "
                   f"{'/'.join(ms(v) for v in r['loss']):>22s} {ms(r['loss_fast'][0]):>11s} "
                   f"{'/'.join(ms(v) for v in r['restore']):>27s} {ms(r['detect'][0]):>7s} {ms(r['ack'][0]):>7s}  "
                   f"{text} {verdict}  {spread(r)}")
    return "\n".join(out)


def hop_table(rows: list[dict]) -> str:
    """The per-hop breakdown, one column per row that has one: p50 / p99 ms (samples)."""
    rows = [r for r in rows if r.get("hops")]
    if not rows:
        return ""
    width = max(len(h) for h in HOPS)
    head = f"{'hop (p50 / p99 ms)':{width}s} " + " ".join(f"{r['failure'] + ' N=' + format(r['n'], ','):>22s}" for r in rows)
    out = [head, "-" * len(head)]
    for h in HOPS:
        cells = []
        for r in rows:
            v = r["hops"].get(h)
            cells.append(f"{ms(v[0]) + ' / ' + ms(v[1]) + f' ({v[2]})':>22s}" if v else f"{'-':>22s}")
        out.append(f"{h:{width}s} " + " ".join(cells))
    return "\n".join(out)


def load(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    m = DATA.search(path.read_text())
    return json.loads(m.group(1)) if m else {}


def notes_after(path: Path) -> str:
    """What was written by hand after the data block (kept when the file is rebuilt)."""
    if not path.exists():
        return ""
    text = path.read_text()
    m = DATA.search(text)
    return text[m.end():].lstrip("\n") if m else ""


def key(row: dict) -> str:
    return f"{row['topology']}/{row['failure']}/{row['n']}"


def order(rows: dict[str, dict]) -> list[dict]:
    kinds = list(NAMES)
    return sorted(rows.values(), key=lambda r: (r["topology"], kinds.index(r["failure"]), r["n"]))


def markdown(rows: dict[str, dict], machine: str, notes: list[str]) -> str:
    ordered = order(rows)
    lines = [
        "# Heal benchmark",
        "",
        f"`benchmarks/bench_heal.py`: the p4nsm controller heals connections on the lab's softswitch fabric "
        f"while sequence-numbered streams cross it. {machine}",
        "",
        "Commands (each row names its own in the details below):",
        "",
        *sorted({f"- `{r['command']}`" for r in ordered}),
        "",
        "## Against the targets",
        "",
        "A row measured in several runs (`--runs`) shows the worst run's figures and the spread of the runs' loss "
        "p50; the *Runs* section below has each run.",
        "",
        "| topology | failure | N | trials | loss window p50 / p99 / max (ms) | all delivering again p50 / p99 / max (ms) | target | | spread of loss p50 |",
        "|---|---|---:|---:|---:|---:|---|---|---|",
    ]
    for r in ordered:
        text, verdict = target_of(r)
        lines.append(f"| {r['topology']} | {NAMES[r['failure']]} | {r['n']:,} | {r['trials']} | "
                     f"{' / '.join(ms(v) for v in r['loss'])} | {' / '.join(ms(v) for v in r['restore'])} | {text} | {verdict} | "
                     f"{spread(r)} |")
    lines += [
        "",
        "## Where the time goes",
        "",
        "Medians over the trials, in ms after the failure: *detected* = the controller's graph lost the element "
        "(a link declared dead from missed probes, or a switch session lost); *head-end acked* = the heal round's "
        "head-end write phase was acknowledged by the switches (`Rerouter.last_round`); *path back* = the slowest "
        "affected stream's first frame after its gap was sent (the data path worked again); *all delivering* = "
        "that frame arrived. Write = acked - detected; data plane = path back - acked (negative: frames crossed "
        "again before the acknowledgement reached the controller, as a switch applies a write before its answer "
        "travels back; with watch ports, before the controller acted at all).",
        "",
        "| topology | failure | N | detected p50 (max) | detected by | head-end acked p50 (max) | write | path back | data plane | all delivering | urgent heal round | mode |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in ordered:
        d, a, back, rs = r["detect"][0], r["ack"][0], r["path_back"][0], r["restore"][0]
        write = a - d if a is not None and d is not None else None
        plane = back - a if back is not None and a is not None and not math.isinf(back) else None
        lines.append(f"| {r['topology']} | {r['failure']} | {r['n']:,} | {ms(d)} ({ms(r['detect'][1])}) | "
                     f"{', '.join(r['detected_by']) or '-'} | {ms(a)} ({ms(r['ack'][1])}) | {ms(write)} | {ms(back)} | "
                     f"{ms(plane)} | {ms(rs)} | {ms(r['round'])} | {r['mode']} |")
    lines += [
        "",
        "## Details",
        "",
        "| topology | failure | N | tracked streams | affected per trial | element(s) failed | ≥1,000 pps stream loss p50 / max (ms) | "
        "loss on the send clock p50 (ms) | offered / delivered (frames/s) | no-failure baseline delivered | sender late max (ms) | inject p50 (ms) | "
        "trials with other elements declared down | load avg max | date |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in ordered:
        b = r["baseline"]
        lines.append(f"| {r['topology']} | {r['failure']} | {r['n']:,} | {r['tracked']} | {r['affected']:.0f} | "
                     f"{', '.join(r['elements'])} | {' / '.join(ms(v) for v in r['loss_fast'])} | {ms(r['send_gap_p50'])} | "
                     f"{r['offered']:,.0f} / {r['delivered']:,.0f} | {b.get('delivered_ratio', 0):.2%} | "
                     f"{ms(r['late_max'])} | {ms(r['inject'])} | {r.get('collateral', 0)} | {r.get('load_max', 0):.1f} | "
                     f"{r['date']} |")
    hopped = [r for r in ordered if r.get("hops")]
    if hopped:
        lines += ["", "## Per-hop breakdown", "",
                  "benchmarks/heal/hops.py: the probe path from the probes of the second before each failure (the streams "
                  "running), the failure path per trial; p50 / p99 in ms, (samples), pooled over the trials. *send -> peer "
                  "ingress* is gRPC to the source switch, its packet-out, the wire and the peer's port, by the peer's "
                  "ingress stamp; *peer ingress -> controller read* is the peer's packet-in stream, gRPC and the "
                  "controller's loop; *controller outbox* is the whole trial's stream messages; the loop lag is a 2 ms "
                  "timer's overshoot. Load: the 1-minute load average of each trial (before or after, the larger).", "",
                  "| topology | failure | N | " + " | ".join(HOPS) + " | load per trial |",
                  "|---|---|---:|" + "---:|" * len(HOPS) + "---|"]
        for r in hopped:
            cells = [f"{ms(v[0])} / {ms(v[1])} ({v[2]})" if (v := r["hops"].get(h)) else "-" for h in HOPS]
            lines.append(f"| {r['topology']} | {r['failure']} | {r['n']:,} | " + " | ".join(cells)
                         + f" | {' '.join(f'{x:.1f}' for x in r.get('loads', []))} |")
    multi = [r for r in ordered if len(r.get("runs", [])) > 1]
    if multi:
        lines += ["", "## Runs", "",
                  "Each run of a row measured in several: loss p50 / p99 / max, detected and head-end acked p50 (ms), "
                  "the CPU reference at its start (s), the load average of each trial, trials with a healthy element "
                  "declared down.", "",
                  "| topology | failure | N | run | loss p50 / p99 / max | detected | acked | CPU ref (s) | load per trial | collateral |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
        for r in multi:
            for i, run in enumerate(r["runs"], 1):
                cpu = f"{run['cpu_s']:.2f}" if run.get("cpu_s") else "-"
                lines.append(f"| {r['topology']} | {r['failure']} | {r['n']:,} | {i} | {' / '.join(ms(v) for v in run['loss'])} | "
                             f"{ms(run['detect'])} | {ms(run['ack'])} | {cpu} | {' '.join(f'{x:.1f}' for x in run['loads'])} | "
                             f"{run['collateral']} |")
    figures = sorted({(r["topology"], r["failure"]) for r in ordered})
    lines += ["", "## Delivery over time", "",
              "One representative trial (the median by *all delivering again*) per failure and N: frames "
              "received per second by all tracked streams, 10 ms bins, around the failure.", ""]
    lines += [f"- [{t} / {NAMES[f]}](heal_{t}_{f}.png)" for t, f in figures]
    lines += ["", "## Method", "", *notes, ""]
    data = json.dumps(rows, separators=(",", ":")).replace("--", "-\\u002d")  # no "--" inside a comment
    lines += ["<!-- heal-data", data, "-->", ""]
    return "\n".join(lines)
