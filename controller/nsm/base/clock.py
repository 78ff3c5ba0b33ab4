"""Wall-clock instants as NSM carries them: protobuf Timestamps and RFC 3339 strings.

NSM compares expiry times across processes, so these are wall-clock (epoch) seconds, never the
event loop's monotonic clock; timers convert to a delay at the moment they are armed.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


def now() -> float:
    return time.time()


def is_set(ts: Timestamp) -> bool:
    return ts.seconds != 0 or ts.nanos != 0


def to_seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def timestamp(seconds: float) -> Timestamp:
    whole = int(seconds // 1)
    return Timestamp(seconds=whole, nanos=round((seconds - whole) * 1e9) % 1_000_000_000)


def format_rfc3339(seconds: float) -> str:
    """Go's time.RFC3339Nano in UTC: trailing zeros of the fraction dropped."""
    ts = timestamp(seconds)
    base = datetime.fromtimestamp(ts.seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{ts.nanos:09d}".rstrip("0")
    return f"{base}{'.' + frac if frac else ''}Z"


def parse_rfc3339(text: str) -> float:
    """Epoch seconds of an RFC 3339 instant with up to nanosecond precision; ValueError otherwise."""
    m = _RFC3339.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not an RFC 3339 time such as 2025-06-01T10:00:00.123456789+02:00")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    offset = 0
    if m.group(9):
        offset = (int(m.group(10)) * 60 + int(m.group(11))) * 60 * (1 if m.group(9) == "+" else -1)
    try:
        base = datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()
    except ValueError as e:
        raise ValueError(f"{text!r}: {e}") from None
    frac = int((m.group(7) or "0").ljust(9, "0")) / 1e9
    return base - offset + frac
