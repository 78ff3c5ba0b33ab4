"""Outlier ejection of endpoints, as Istio/Envoy do it.

An endpoint that fails `consecutive` forwarded Requests or liveness checks in a row is left out
of selection for `base_time` × (how many times it has been ejected). Never more than
`max_percent` of a service's endpoints are out at once, though at least one may always be
(Envoy's rule, so that a two-endpoint service can still route around a bad one). A success
resets the failure count; an ejection ends by itself when its time is up.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable

log = logging.getLogger("p4nsm.nsm")


@dataclasses.dataclass(slots=True)
class _Record:
    failures: int = 0
    ejections: int = 0
    until: float = 0.0


class OutlierDetector:
    def __init__(self, consecutive: int = 5, base_time: float = 30.0, max_percent: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.consecutive = consecutive
        self.base_time = base_time
        self.max_percent = max_percent
        self.clock = clock
        self.records: dict[str, _Record] = {}

    def ejected(self, name: str) -> bool:
        rec = self.records.get(name)
        return rec is not None and rec.until > self.clock()

    def report(self, name: str, ok: bool, population: list[str] | None = None) -> None:
        """The outcome of one forwarded Request or liveness check of endpoint `name`;
        `population` is the service's endpoints (for the share rule)."""
        rec = self.records.setdefault(name, _Record())
        if ok:
            rec.failures = 0
            return
        rec.failures += 1
        if rec.failures < self.consecutive or self.ejected(name):
            return
        peers = population or [name]
        out_now = sum(1 for p in peers if p != name and self.ejected(p))
        allowed = max(1, math.floor(len(peers) * self.max_percent / 100))
        if out_now >= allowed:
            log.warning("endpoint=%s event=ejection_skipped failures=%d ejected=%d allowed=%d", name, rec.failures, out_now, allowed)
            return
        rec.ejections += 1
        duration = self.base_time * rec.ejections
        rec.until = self.clock() + duration
        rec.failures = 0
        log.warning("endpoint=%s event=ejected seconds=%.0f times=%d", name, duration, rec.ejections)
