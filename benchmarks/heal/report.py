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

NAMES = {"cut": "silent link cut", "port": "port down", "kill": "switch killed (SIGKILL)", "freeze": "switch frozen (SIGSTOP)"}
# (metric, limit in ms, N it is stated for) from the issue
TARGETS = {"cut": ("loss p50", 50.0, 100), "port": ("loss p50", 10.0, None), "kill": ("loss p50", 50.0, None),
           "freeze": ("loss p50", 250.0, None)}
RESTORE_TARGET = ("all delivering p50", 1000.0, 10_000)
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
        "offered": sum(t.offered_pps for t in trials) / len(trials),
        "delivered": sum(t.delivered_pps for t in trials) / len(trials),
        "baseline": baseline,
        "rep": {"trial": rep.trial, "element": rep.element, "detect": rep.detect_ms, "ack": rep.ack_ms,
                "restore": rep.all_restored_ms, "series": rep.series, "bin_ms": BIN_MS, "from_ms": -SERIES_BEFORE_MS},
    }


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
    text = f"p50 ≤ {limit:.0f} ms" + (f" (N={at_n})" if at_n else "")
    if at_n is not None and row["n"] != at_n:
        return text, ""
    got = row["loss"][0]
    return text, "met" if got is not None and got <= limit else "missed"


def console_table(rows: list[dict]) -> str:
    head = f"{'topology':12s} {'failure':7s} {'N':>6s} {'trials':>6s} {'loss p50/p99/max ms':>22s} " \
           f"{'1k-pps loss':>11s} {'all deliver p50/p99/max ms':>27s} {'detect':>7s} {'ack':>7s}  target"
    out = [head, "-" * len(head)]
    for r in rows:
        text, verdict = target_of(r)
        out.append(f"{r['topology']:12s} {r['failure']:7s} {r['n']:>6,} {r['trials']:>6} "
                   f"{'/'.join(ms(v) for v in r['loss']):>22s} {ms(r['loss_fast'][0]):>11s} "
                   f"{'/'.join(ms(v) for v in r['restore']):>27s} {ms(r['detect'][0]):>7s} {ms(r['ack'][0]):>7s}  "
                   f"{text} {verdict}")
    return "\n".join(out)


def load(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    m = DATA.search(path.read_text())
    return json.loads(m.group(1)) if m else {}


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
        "| topology | failure | N | trials | loss window p50 / p99 / max (ms) | all delivering again p50 / p99 / max (ms) | target | |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in ordered:
        text, verdict = target_of(r)
        lines.append(f"| {r['topology']} | {NAMES[r['failure']]} | {r['n']:,} | {r['trials']} | "
                     f"{' / '.join(ms(v) for v in r['loss'])} | {' / '.join(ms(v) for v in r['restore'])} | {text} | {verdict} |")
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
    figures = sorted({(r["topology"], r["failure"]) for r in ordered})
    lines += ["", "## Delivery over time", "",
              "One representative trial (the median by *all delivering again*) per failure and N: frames "
              "received per second by all tracked streams, 10 ms bins, around the failure.", ""]
    lines += [f"- [{t} / {NAMES[f]}](heal_{t}_{f}.png)" for t, f in figures]
    lines += ["", "## Method", "", *notes, ""]
    data = json.dumps(rows, separators=(",", ":")).replace("--", "-\\u002d")  # no "--" inside a comment
    lines += ["<!-- heal-data", data, "-->", ""]
    return "\n".join(lines)
