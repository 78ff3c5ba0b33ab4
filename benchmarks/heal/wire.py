"""What the benchmark's frames carry, shared by the sender, the receiver and the analysis.

Kept free of scapy and of the controller: the sender and receiver processes import only this and
the standard library, so that they start fast inside `ip netns exec`.
"""

from __future__ import annotations

import struct

MAGIC = b"HEAL"
# magic, trial, stream, sequence number, send time (CLOCK_MONOTONIC ns: one clock for every
# namespace, as netns does not virtualise it)
PAYLOAD = struct.Struct("!4sHIIQ")
# One received frame as the receiver stores it: stream, seq, send time, receive time.
RECORD = struct.Struct("=IIQQ")
RECORD_DTYPE = [("stream", "<u4"), ("seq", "<u4"), ("tx", "<u8"), ("rx", "<u8")]
# Where the payload starts: after Ethernet + 802.1Q as sent, after Ethernet alone once the
# receiving kernel has moved the tag into packet metadata (it always does on veth).
OFFSET_TAGGED = 18
OFFSET_UNTAGGED = 14


def parse(frame: memoryview | bytes, length: int) -> tuple[int, int, int, int] | None:
    """(trial, stream, seq, tx_ns) of one of our frames, None for anything else."""
    for offset in (OFFSET_UNTAGGED, OFFSET_TAGGED):
        if length >= offset + PAYLOAD.size and frame[offset:offset + 4] == MAGIC:
            _, trial, stream, seq, tx = PAYLOAD.unpack_from(frame, offset)
            return trial, stream, seq, tx
    return None
