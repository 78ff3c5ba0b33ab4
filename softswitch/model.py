"""What the data plane reads: the runtime form of tables and action profiles.

The P4Runtime server (softswitch.server / softswitch.tables) owns these objects and mutates
them on Write; the packet pipeline (softswitch.pipeline) only reads them. Both run on the one
asyncio loop, so a Write is applied between two packets, never in the middle of one.

Values are plain ints in P4Info order: the pipeline must not decode protobuf bytes per packet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(slots=True)
class ActionCall:
    """An action bound to its arguments, in the P4Info's parameter order."""

    name: str
    args: tuple[int, ...] = ()


@dataclasses.dataclass(slots=True)
class Member:
    action: ActionCall
    watch_port: int | None = None


@dataclasses.dataclass(slots=True)
class Entry:
    """One table entry as the pipeline sees it: a direct action, or a member/group reference."""

    action: ActionCall | None = None
    member_id: int | None = None
    group_id: int | None = None
    # Direct counter cells; the pipeline bumps them on every hit.
    packets: int = 0
    bytes: int = 0


@dataclasses.dataclass(slots=True)
class TernaryEntry:
    """A non-exact entry: (value, mask) per field (LPM and optional are turned into masks)."""

    values: tuple[int, ...]
    masks: tuple[int, ...]
    priority: int
    entry: Entry


class RuntimeTable:
    """Lookup structure for one table.

    All-exact tables use a dict keyed by the tuple of field values (the fast path the fabric
    uses); other tables scan their entries by descending priority (LPM: by prefix length).
    """

    __slots__ = ("name", "exact", "ternary", "default", "all_exact")

    def __init__(self, name: str, all_exact: bool, default: ActionCall) -> None:
        self.name = name
        self.all_exact = all_exact
        self.exact: dict[tuple[int, ...], Entry] = {}
        self.ternary: list[TernaryEntry] = []  # kept sorted, best match first
        self.default = default

    def lookup(self, key: tuple[int, ...]) -> Entry | None:
        if self.all_exact:
            return self.exact.get(key)
        for t in self.ternary:
            for v, m, k in zip(t.values, t.masks, key):
                if k & m != v:
                    break
            else:
                return t.entry
        return None


class RuntimeProfile:
    """An action profile (with or without selector): members and groups."""

    __slots__ = ("name", "members", "groups")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: dict[int, Member] = {}
        # group id -> [(member id, weight)] in the order the controller wrote them
        self.groups: dict[int, list[tuple[int, int]]] = {}

    def select(self, group_id: int, flow_hash: int, port_up: Callable[[int], bool]) -> Member | None:
        """Pick a member of a group by hash among the members whose watch port is up.

        Like BMv2 with watch ports: members whose port is down leave the selection at once.
        Returns None when the group is unknown or has no live member (the packet is dropped).
        """
        live: list[Member] = []
        for member_id, weight in self.groups.get(group_id, ()):
            member = self.members.get(member_id)
            if member is None:
                continue
            if member.watch_port is not None and not port_up(member.watch_port):
                continue
            live.extend([member] * max(weight, 1))
        if not live:
            return None
        return live[flow_hash % len(live)]


@dataclasses.dataclass(slots=True)
class DataplaneState:
    """Everything the pipeline needs from one committed pipeline config."""

    tables: dict[str, RuntimeTable]
    profiles: dict[str, RuntimeProfile]
    # table name -> profile name, for tables with an implementation (action profile/selector)
    table_profile: dict[str, str]
    # controller packet metadata: header name ("packet_in"/"packet_out") -> [(field name, bitwidth)]
    packet_metadata: dict[str, list[tuple[str, int]]]
