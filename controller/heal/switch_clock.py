"""A switch's packet-in time stamps (v1model's ingress_global_timestamp: microseconds of the
switch's own clock) on the controller's monotonic clock.

The offset between the two clocks is not known, but every stamped probe bounds it: the probe
entered the peer switch after the controller sent it and before the controller read its
packet-in, so offset >= sent - stamp and offset <= received - stamp. The bounds tighten with
every probe and hold for good while the switch's clock runs (a restarted BMv2 starts a new one:
`forget`). A stamp read with the upper bound is never early, with the lower never late; what
proves a loss uses each the way that errs towards patience.
"""

from __future__ import annotations

import math


class SwitchClocks:
    def __init__(self, switches: list[str]) -> None:
        self._lo: dict[str, float] = {s: -math.inf for s in switches}  # ns
        self._hi: dict[str, float] = {s: math.inf for s in switches}

    def observe(self, switch: str, stamp_ns: int, sent_ns: int, received_ns: int) -> None:
        lo = sent_ns - stamp_ns
        if lo > self._lo[switch]:
            self._lo[switch] = lo
        hi = received_ns - stamp_ns
        if hi < self._hi[switch]:
            self._hi[switch] = hi

    def forget(self, switch: str) -> None:
        self._lo[switch], self._hi[switch] = -math.inf, math.inf

    def known(self, switch: str) -> bool:
        return self._hi[switch] < math.inf

    def latest(self, switch: str, stamp_ns: int) -> float:
        """The latest the stamped moment can have been, on the controller's clock (inf: unknown)."""
        return stamp_ns + self._hi[switch]

    def earliest(self, switch: str, stamp_ns: int) -> float:
        """The earliest it can have been (-inf: unknown)."""
        return stamp_ns + self._lo[switch]

    def best(self, switch: str, stamp_ns: int) -> float:
        """The best estimate, for figures: a switch whose bounds admit no offset shares the
        controller's clock (the softswitch stamps CLOCK_MONOTONIC); else the upper bound."""
        lo, hi = self._lo[switch], self._hi[switch]
        return stamp_ns + (0.0 if lo <= 0.0 <= hi else hi)
