"""From one trial's received frames to its figures: per stream the largest run of lost
sequence numbers around the failure (the loss window is that run times the stream's interval)
and when the stream delivered again; per trial when every affected stream delivered again, and
the delivery rate over time for the figures."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from benchmarks.heal.traffic import Stream, TrialTraffic

BIN_MS = 5.0
SERIES_BEFORE_MS = 300.0
SERIES_AFTER_MS = 1200.0
NOT_RESTORED = math.inf


@dataclasses.dataclass
class StreamResult:
    index: int
    rate: float
    affected: bool  # its active path crossed the failed element when the failure came
    sent: int
    received: int
    lost_run: int  # the largest run of lost sequence numbers not over before the failure
    loss_window_ms: float  # lost_run x interval
    send_gap_ms: float  # the same gap on the sender's clock: last before to first after, minus one interval
    restore_ms: float  # failure -> first frame after the run arrived; 0 without a run, inf if none came


@dataclasses.dataclass
class TrialResult:
    trial: int
    element: str
    t_fail: int
    inject_ms: float
    streams: list[StreamResult]
    all_restored_ms: float  # the slowest affected stream (inf: one never delivered again)
    detect_ms: float | None
    detected_by: str
    ack_ms: float | None
    rerouted: int
    switch_over_ms: float | None  # the first heal round's switch-over, as the rerouter timed it
    offered_pps: float
    delivered_pps: float
    late_max_ms: float
    series: list[int]  # frames received per BIN_MS by all tracked streams, from -SERIES_BEFORE_MS

    @property
    def affected(self) -> list[StreamResult]:
        return [s for s in self.streams if s.affected]


def _largest_run(present: np.ndarray, rx_of_seq: np.ndarray, t_fail: int) -> tuple[int, int, int]:
    """(length, first missing seq, seq after the run or -1) of the largest run of lost frames
    that does not end before the failure (earlier runs are noise, not the failure's doing)."""
    missing = ~present
    if not missing.any():
        return 0, 0, 0
    edges = np.diff(np.concatenate(([0], missing.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    best = (0, 0, 0)
    for s, e in zip(starts, ends):
        after = int(e) if e < len(present) else -1
        if after >= 0 and rx_of_seq[after] < t_fail:
            continue
        if e - s > best[0]:
            best = (int(e - s), int(s), after)
    return best


def stream_result(stream: Stream, rec: np.ndarray, sent: int, t_fail: int, affected: bool) -> StreamResult:
    rec = rec[rec["seq"] < sent]
    present = np.zeros(sent, dtype=bool)
    present[rec["seq"]] = True
    rx_of_seq = np.full(sent, np.iinfo(np.uint64).max, dtype=np.uint64)
    tx_of_seq = np.zeros(sent, dtype=np.uint64)
    np.minimum.at(rx_of_seq, rec["seq"], rec["rx"])
    tx_of_seq[rec["seq"]] = rec["tx"]
    run, first, after = _largest_run(present, rx_of_seq, t_fail)
    if run == 0:
        restore, send_gap = 0.0, 0.0
    elif after < 0:
        restore, send_gap = NOT_RESTORED, NOT_RESTORED
    else:
        restore = max(0.0, (int(rx_of_seq[after]) - t_fail) / 1e6)
        before = int(tx_of_seq[first - 1]) if first > 0 else int(tx_of_seq[after]) - int((run + 1) * 1e9 / stream.rate)
        send_gap = (int(tx_of_seq[after]) - before) / 1e6 - stream.period_ms
    return StreamResult(stream.index, stream.rate, affected, sent, int(present.sum()), run, run * stream.period_ms,
                        send_gap, restore)


def series(records: np.ndarray, t_fail: int) -> list[int]:
    rel_ms = (records["rx"].astype(np.int64) - t_fail) / 1e6
    bins = np.arange(-SERIES_BEFORE_MS, SERIES_AFTER_MS + BIN_MS / 2, BIN_MS)
    counts, _ = np.histogram(rel_ms, bins=bins)
    return [int(c) for c in counts]


def analyse(trial: int, element: str, streams: list[Stream], traffic: TrialTraffic, t_fail: int, inject_ms: float,
            affected: set[int], window) -> TrialResult:
    recs = traffic.records
    order = np.argsort(recs["stream"], kind="stable")
    recs_sorted = recs[order]
    keys = recs_sorted["stream"]
    results = []
    for s in streams:
        part = recs_sorted[np.searchsorted(keys, s.index):np.searchsorted(keys, s.index, side="right")]
        results.append(stream_result(s, part, traffic.sent.get(s.index, 0), t_fail, s.index in affected))
    hit = [r.restore_ms for r in results if r.affected]
    seconds = (traffic.end_ns - traffic.start_ns) / 1e9

    def rel(ns: int | None) -> float | None:
        return None if ns is None else (ns - t_fail) / 1e6

    return TrialResult(
        trial=trial, element=element, t_fail=t_fail, inject_ms=inject_ms, streams=results,
        all_restored_ms=max(hit) if hit else 0.0, detect_ms=rel(window.detect_ns), detected_by=window.detected_by,
        ack_ms=rel(window.ack_ns), rerouted=window.rerouted,
        switch_over_ms=window.rounds[0].get("switch_over_ms") if window.rounds else None,
        offered_pps=sum(traffic.sent.values()) / seconds, delivered_pps=len(recs) / seconds,
        late_max_ms=traffic.late_max_ms, series=series(recs, t_fail),
    )
