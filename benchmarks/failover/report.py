"""The failover rows' tables: p50/p90/max per measure, and "target met" judged on the figure the
target names (a zero target on the worst trial, a p50 target on the p50), merged into
benchmarks/results/failover.md row by row (a row run again replaces its section only)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

SECTION = re.compile(r"^## Row (\w+)", re.M)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclasses.dataclass(frozen=True)
class Measure:
    key: str
    label: str
    unit: str  # "ms" (values in s), "" (counts)
    target: str = ""  # what the issue asks, as text
    met: Callable[[list[dict[str, float]]], bool] | None = None  # on the trials, the named figure

    def cell(self, v: float) -> str:
        return f"{v * 1000:.0f} ms" if self.unit == "ms" else f"{v:.0f}"


def zero(key: str) -> Callable[[list[dict[str, float]]], bool]:
    return lambda rows: max(r[key] for r in rows) == 0


ROWS: dict[str, tuple[str, list[Measure]]] = {
    "A": ("controller restart: one controller on its sqlite store SIGKILLed under the streams and started again at once", [
        Measure("lost", "frames lost (per trial, all streams)", "", "0 (worst trial)", zero("lost")),
        Measure("writes", "entity writes at start-up (inserted + modified + deleted, every switch)", "",
                "0 (worst trial)", zero("writes")),
        Measure("stored_lost", "stored connections lost", "", "0 (worst trial)", zero("stored_lost")),
        Measure("reconciled", "death -> every switch reconciled (probes and heal run from then)", "ms"),
    ]),
    "B": ("leader SIGKILL with two followers, a silent cut of the busiest first link 200 ms after the death", [
        Measure("lost_before_cut", "frames lost, sent before the cut (per trial, all streams)", "", "0 (worst trial)",
                zero("lost_before_cut")),
        Measure("control", "control: loss window of a silent cut of that link with the leader alive (largest, per trial)", "ms"),
        Measure("takeover", "death -> every switch has the new primary", "ms"),
        Measure("window", "**loss window of the connections crossing the cut** (largest, per trial)", "ms",
                "<= that trial's takeover - 200 ms + silent-cut heal, every trial",
                lambda rows: all(r["window"] <= r["bound"] for r in rows)),
        Measure("bound", "the bound: takeover - 200 ms + silent-cut heal (p90 of the row's control cuts)", "ms"),
        Measure("others", "largest gap of the connections not crossing it", "ms"),
    ]),
    "C": ("a deposed leader waking up: SIGSTOP (connections churned through it) until the follower leads, then SIGCONT", [
        Measure("attempted", "writes attempted after SIGCONT (refused + entries that got through)", ""),
        Measure("refused", "writes refused (by the switches: updates; by etcd: operations)", ""),
        Measure("through", "**entries of the deposed leader left on the switches** (read back)", "",
                "0: every write refused (worst trial)", zero("through")),
        Measure("missing", "entries of the fabric gone from the switches", "", "0 (worst trial)", zero("missing")),
        Measure("churned", "connections churned through the leader before the stop", ""),
    ]),
    "S": ("leader SIGKILL with one follower, where the time goes (read from the follower's log)", [
        Measure("election", "death -> follower won (heartbeat silence + lease revoked + election)", "ms"),
        Measure("arbitration", "won -> every switch primary (arbitration)", "ms"),
        Measure("reconcile", "last primary -> every switch reconciled", "ms"),
        Measure("primary", "**death -> every switch has the new primary**", "ms", "p50 <= 1 s",
                lambda rows: pct([r["primary"] for r in rows], 0.5) <= 1.0),
        Measure("total", "death -> reconciled (probes and heal run)", "ms"),
    ]),
}


def table(row: str, trials: list[dict[str, float]], header: str, notes: list[str]) -> str:
    title, measures = ROWS[row]
    lines = [f"## Row {row}: {title}", "", header, "",
             "| measure | p50 | p90 | max | target | target met |", "|---|---|---|---|---|---|"]
    for m in measures:
        vs = [r[m.key] for r in trials]
        met = "" if m.met is None else ("yes" if m.met(trials) else "**no**")
        lines.append(f"| {m.label} | {m.cell(pct(vs, 0.5))} | {m.cell(pct(vs, 0.9))} | {m.cell(max(vs))} | "
                     f"{m.target or '-'} | {met or '-'} |")
    if notes:
        lines += ["", "Notes: where a target was missed, what the replica concerned logged (warnings, errors, link "
                  "events); and what the row's end found left behind:", "", "```", *notes[:60], "```"]
    return "\n".join(lines) + "\n"


def merge(path: Path, title: str, intro: str, sections: dict[str, str]) -> str:
    """The file with `sections` (row -> text) replacing those rows' old sections, in row order."""
    old = path.read_text() if path.exists() else ""
    kept: dict[str, str] = {}
    for m, nxt in zip(list(SECTION.finditer(old)), [*list(SECTION.finditer(old))[1:], None]):
        kept[m[1]] = old[m.start():nxt.start() if nxt else len(old)].rstrip() + "\n"
    kept.update(sections)
    body = "\n".join(kept[k] for k in sorted(kept, key=lambda k: (k not in ROWS, list(ROWS).index(k) if k in ROWS else 0)))
    return f"# {title}\n\n{intro}\n\n{body}"


RUNS_MARK = re.compile(r"<!-- runs: (.*) -->")


def chaos_runs(path: Path, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs the file already has (kept in it as JSON) with `new` replacing those of their
    seeds: the five seeds need not run in one sitting (a lab hold is short)."""
    old = RUNS_MARK.search(path.read_text()) if path.exists() else None
    runs = {r["seed"]: r for r in (json.loads(old[1]) if old else [])}
    runs.update({r["seed"]: r for r in new})
    return [runs[k] for k in sorted(runs)]


def chaos_table(runs: list[dict[str, Any]], header: str) -> str:
    lines = [header, "",
             "| seed | failures (by kind) | connections stalled > 1 s with a path | worst such stall | stored connections lost "
             "| orphaned entries (read back) | frames lost / sent |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["kinds"].items()))
        lines.append(f"| {r['seed']} | {r['failures']} ({kinds}) | {r['stalled']} | {r['worst_stall_ms']:.0f} ms | "
                     f"{r['stored_lost']} | {r['orphans']} {r['orphans_by_switch'] or ''} | {r['frames_lost']} / {r['sent']} |")
    ok = [("connections stalled > 1 s with a surviving path", "stalled"), ("stored connections lost", "stored_lost"),
          ("orphaned entries at the end", "orphans")]
    lines += ["", "| figure (sum over the runs) | value | target | target met |", "|---|---|---|---|"]
    for label, key in ok:
        total = sum(r[key] for r in runs)
        lines.append(f"| {label} | {total} | 0 | {'yes' if total == 0 else '**no**'} |")
    notes = [ln for r in runs for ln in r.get("notes", [])]
    if notes:
        lines += ["", "Notes: where a target was missed, what the replicas logged (warnings, errors); and what a run's end "
                  "found left behind:", "", "```", *notes[:80], "```"]
    lines += ["", f"<!-- runs: {json.dumps(runs)} -->"]
    return "\n".join(lines) + "\n"
