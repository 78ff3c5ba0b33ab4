"""From one trial's received frames to its figures: per stream the largest run of lost
sequence numbers around the failure (the loss window is that run times the stream's interval)
and when the stream delivered again; per trial the failure instant, when every affected stream
delivered again, and the delivery rate over time for the figures."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from benchmarks.heal.traffic import Stream, TrialTraffic

BIN_MS = 10.0
SERIES_BEFORE_MS = 300.0
SERIES_AFTER_MS = 2000.0
NOT_RESTORED = math.inf
NEVER = np.iinfo(np.uint64).max


@dataclasses.dataclass
class StreamResult:
    index: int
    rate: float
    affected: bool  # its active path crossed the failed element when the failure came
    sent: int
    received: int
    lost_run: int  # the largest run of lost sequence numbers not over before the failure
    loss_window_ms: float  # lost_run x interval
    lost_from_ns: int | None  # when the run began: the frame before it was sent, plus one interval
    resume_tx_ns: int | None  # send and receive time of the first frame after the run
    resume_rx_ns: int | None
    restore_ms: float = 0.0  # failure -> resume_rx; 0 without a run, inf when nothing came after it
    resume_tx_ms: float = 0.0  # failure -> resume_tx: when the path carried frames again
    send_gap_ms: float = 0.0  # the run on the sender's clock: last before to first after, minus one interval


@dataclasses.dataclass
class TrialResult:
    trial: int
    element: str
    t_fail: int  # failure instant, CLOCK_MONOTONIC ns
    inject_ms: float  # how long the injecting call took
    streams: list[StreamResult]
    all_restored_ms: float  # the slowest affected stream (inf: one never delivered again)
    path_back_ms: float  # the same on the send clock: the slowest affected stream's resume_tx
    detect_ms: float | None
    detected_by: str
    ack_ms: float | None  # head-end writes acknowledged (the last urgent heal round's)
    rerouted_ms: float | None  # the last connection reported rerouted
    rerouted: int
    round_ms: float | None  # the first urgent heal round, start to end, as the rerouter timed it
    offered_pps: float
    delivered_pps: float
    late_max_ms: float
    series: list[int]  # frames received per BIN_MS by all tracked streams, from -SERIES_BEFORE_MS
    collateral: list[str] = dataclasses.field(default_factory=list)  # declared down but not failed
    load: float = 0.0  # the machine's 1-minute load average after the trial
    load_before: float = 0.0  # ...and before it
    hops: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # benchmarks.heal.hops: samples per hop, ms

    @property
    def affected(self) -> list[StreamResult]:
        return [s for s in self.streams if s.affected]


def _largest_run(present: np.ndarray, rx_of_seq: np.ndarray, since_ns: int) -> tuple[int, int, int]:
    """(length, first missing seq, seq after the run or -1) of the largest run of lost frames
    that does not end before `since_ns` (earlier runs are noise, not the failure's doing)."""
    missing = ~present
    if not missing.any():
        return 0, 0, 0
    edges = np.diff(np.concatenate(([0], missing.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    best = (0, 0, 0)
    for s, e in zip(starts, ends):
        after = int(e) if e < len(present) else -1
        if after >= 0 and int(rx_of_seq[after]) < since_ns:
            continue
        if e - s > best[0]:
            best = (int(e - s), int(s), after)
    return best


def stream_result(stream: Stream, rec: np.ndarray, sent: int, since_ns: int, affected: bool) -> StreamResult:
    rec = rec[rec["seq"] < sent]
    present = np.zeros(sent, dtype=bool)
    present[rec["seq"]] = True
    rx_of_seq = np.full(sent, NEVER, dtype=np.uint64)
    tx_of_seq = np.zeros(sent, dtype=np.uint64)
    np.minimum.at(rx_of_seq, rec["seq"], rec["rx"])
    tx_of_seq[rec["seq"]] = rec["tx"]
    run, first, after = _largest_run(present, rx_of_seq, since_ns)
    period_ns = int(1e9 / stream.rate)
    lost_from = int(tx_of_seq[first - 1]) + period_ns if run and first > 0 else None
    resume_tx = int(tx_of_seq[after]) if run and after >= 0 else None
    resume_rx = int(rx_of_seq[after]) if run and after >= 0 else None
    return StreamResult(stream.index, stream.rate, affected, sent, int(present.sum()), run, run * stream.period_ms,
                        lost_from, resume_tx, resume_rx)


def failure_instant(streams: list[StreamResult], t_start: int, t_done: int) -> int:
    """When the data path broke: the earliest start of a lost run among the affected streams
    (to one interval of its stream, 1 ms with the 1,000 frames/s one), kept within the injecting
    call; the call's end when nothing was lost."""
    starts = [s.lost_from_ns for s in streams if s.affected and s.lost_from_ns is not None]
    if not starts:
        return t_done
    return min(max(min(starts), t_start), t_done)


def series(records: np.ndarray, t_fail: int) -> list[int]:
    rel_ms = (records["rx"].astype(np.int64) - t_fail) / 1e6
    bins = np.arange(-SERIES_BEFORE_MS, SERIES_AFTER_MS + BIN_MS / 2, BIN_MS)
    counts, _ = np.histogram(rel_ms, bins=bins)
    return [int(c) for c in counts]


def analyse(trial: int, element: str, streams: list[Stream], traffic: TrialTraffic, t_start: int, t_done: int,
            affected: set[int], window) -> TrialResult:
    recs = traffic.records
    recs_sorted = recs[np.argsort(recs["stream"], kind="stable")]
    keys = recs_sorted["stream"]
    results = []
    for s in streams:
        part = recs_sorted[np.searchsorted(keys, s.index):np.searchsorted(keys, s.index, side="right")]
        results.append(stream_result(s, part, traffic.sent.get(s.index, 0), t_start, s.index in affected))
    t_fail = failure_instant(results, t_start, t_done)
    for r in results:
        if r.lost_run == 0:
            continue
        if r.resume_rx_ns is None:
            r.restore_ms = r.resume_tx_ms = r.send_gap_ms = NOT_RESTORED
            continue
        r.restore_ms = max(0.0, (r.resume_rx_ns - t_fail) / 1e6)
        r.resume_tx_ms = max(0.0, (r.resume_tx_ns - t_fail) / 1e6)
        began = r.lost_from_ns if r.lost_from_ns is not None else traffic.start_ns
        r.send_gap_ms = (r.resume_tx_ns - began) / 1e6
    hit = [r for r in results if r.affected]
    seconds = (traffic.end_ns - traffic.start_ns) / 1e9

    def rel(ns: int | None) -> float | None:
        return None if ns is None else (ns - t_fail) / 1e6

    return TrialResult(
        trial=trial, element=element, t_fail=t_fail, inject_ms=(t_done - t_start) / 1e6, streams=results,
        all_restored_ms=max((r.restore_ms for r in hit), default=0.0),
        path_back_ms=max((r.resume_tx_ms for r in hit), default=0.0),
        detect_ms=rel(window.detect_ns), detected_by=window.detected_by,
        ack_ms=rel(window.heads_ack_ns), rerouted_ms=rel(window.rerouted_ns), rerouted=window.rerouted,
        round_ms=next((r["round_ms"] for r in window.rounds if r.get("urgent")), None),
        offered_pps=sum(traffic.sent.values()) / seconds, delivered_pps=len(recs) / seconds,
        late_max_ms=traffic.late_max_ms, series=series(recs, t_fail),
    )
