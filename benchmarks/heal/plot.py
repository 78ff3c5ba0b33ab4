"""heal_<topology>_<failure>.png: delivery over time around the failure, one panel per N."""

from __future__ import annotations

import math
from pathlib import Path

try:
    import matplotlib
except ImportError:
    raise SystemExit("the heal benchmark's plots need matplotlib: pip install 'p4nsm[draw]'") from None

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.heal.report import NAMES


def draw(rows: list[dict], out: Path) -> None:
    rows = sorted(rows, key=lambda r: r["n"])
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 2.6 * len(rows) + 0.6), squeeze=False, sharex=True)
    for ax, r in zip(axes[:, 0], rows):
        rep = r["rep"]
        bin_ms = rep["bin_ms"]
        xs = [rep["from_ms"] + (i + 0.5) * bin_ms for i in range(len(rep["series"]))]
        ys = [c * 1000.0 / bin_ms for c in rep["series"]]
        ax.step(xs, ys, where="mid", lw=1.0, color="tab:blue", label="delivered")
        ax.axhline(r["offered"], color="grey", ls=":", lw=1, label="offered")
        marks = [(0.0, "failure", "black"), (rep["detect"], "detected", "tab:orange"),
                 (rep["ack"], "head-end write acked", "tab:red"), (rep["restore"], "all delivering", "tab:green")]
        for x, label, color in marks:
            if x is not None and not math.isinf(x):
                ax.axvline(x, color=color, ls="--", lw=1, label=f"{label} ({x:.0f} ms)")
        ax.set_ylabel("frames/s")
        ax.set_title(f"N={r['n']:,}: {r['tracked']} tracked streams, failed {rep['element']} "
                     f"(trial {rep['trial']}, median of {r['trials']})", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_ylim(bottom=0)
    ends = [r["rep"]["restore"] for r in rows if r["rep"]["restore"] is not None and not math.isinf(r["rep"]["restore"])]
    axes[-1, 0].set_xlim(-200, min(2000, max([400.0, *(e * 1.5 + 100 for e in ends)])))
    axes[-1, 0].set_xlabel("ms after the failure")
    fig.suptitle(f"{rows[0]['topology']}: {NAMES[rows[0]['failure']]} ({rows[0]['mode']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
