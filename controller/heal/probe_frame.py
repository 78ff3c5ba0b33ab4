"""The link probe: an Ethernet frame of EtherType 0x88B5 that the controller sends out of one
switch port (packet-out) and expects back as a packet-in from the peer switch.

Encoded with struct rather than scapy: probes run at hundreds of frames per second per link on
the controller's event loop. tests/e2e dissect them with an independent scapy layer.
"""

from __future__ import annotations

import dataclasses
import struct

ETHERTYPE_PROBE = 0x88B5
MAGIC = b"P4NS"
# dst: locally administered, never a real host's; src: fixed, the origin id is in the payload
_DST = bytes.fromhex("0201504e534d")
_SRC = bytes.fromhex("0201504e5300")
_HEADER = struct.Struct("!6s6sH4sQQIQQ")  # eth dst, src, type, magic, origin, device, port, seq, sent_ns
SIZE = _HEADER.size


@dataclasses.dataclass(frozen=True, slots=True)
class Probe:
    origin: int  # random per controller instance: a probe from anyone else is not ours
    device_id: int
    port: int
    seq: int
    sent_ns: int


def encode(p: Probe) -> bytes:
    frame = _HEADER.pack(_DST, _SRC, ETHERTYPE_PROBE, MAGIC, p.origin, p.device_id, p.port, p.seq, p.sent_ns)
    return frame.ljust(60, b"\x00")  # minimum Ethernet frame without FCS


def decode(frame: bytes) -> Probe | None:
    """None for anything that is not a well-formed p4nsm probe."""
    if len(frame) < SIZE:
        return None
    _, _, etype, magic, origin, device, port, seq, sent = _HEADER.unpack_from(frame)
    if etype != ETHERTYPE_PROBE or magic != MAGIC:
        return None
    return Probe(origin, device, port, seq, sent)
