"""The intent of one connection, as the store keeps it and the programmer writes it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class Hop(BaseModel):
    """One switch of a path: where the connection enters and leaves it."""

    model_config = ConfigDict(frozen=True)
    switch: str
    in_port: int
    out_port: int


class Path(BaseModel):
    model_config = ConfigDict(frozen=True)
    hops: tuple[Hop, ...]
    links: tuple[str, ...]  # link names crossed, in order

    @property
    def switches(self) -> tuple[str, ...]:
        return tuple(h.switch for h in self.hops)

    def reversed(self) -> Path:
        return Path(
            hops=tuple(Hop(switch=h.switch, in_port=h.out_port, out_port=h.in_port) for h in reversed(self.hops)),
            links=tuple(reversed(self.links)),
        )


class Attachment(BaseModel):
    """Where a connection meets a host: the host's switch port and the VLAN on that link."""

    model_config = ConfigDict(frozen=True)
    host: str
    switch: str
    port: int
    vlan: int


class Leg(BaseModel):
    """One direction of a connection over one path, named by its fabric-wide label."""

    model_config = ConfigDict(frozen=True)
    label: int
    path: Path


State = Literal["installing", "up", "down", "removing"]


class ConnectionPlan(BaseModel):
    """Everything needed to (re)write a connection's entries on every switch.

    `a_to_b`/`b_to_a` are the active legs; `a_to_b_backup`/`b_to_a_backup` are installed ahead
    of time so that a heal rewrites only the two head-end classification entries.
    """

    id: str
    a: Attachment
    b: Attachment
    a_to_b: Leg
    b_to_a: Leg
    a_to_b_backup: Leg | None = None
    b_to_a_backup: Leg | None = None
    state: State = "installing"
    revision: int = 1
    # Free-form metadata of the layer above (NSM connection id, service, host-side config).
    labels: dict[str, str] = {}

    def legs(self) -> list[Leg]:
        return [leg for leg in (self.a_to_b, self.b_to_a, self.a_to_b_backup, self.b_to_a_backup) if leg is not None]

    def on_backup(self) -> ConnectionPlan:
        """The plan switched over to its pre-installed backup legs (which it must have): only
        the head entries change on the switches, and it has no backup until one is found."""
        assert self.a_to_b_backup is not None and self.b_to_a_backup is not None
        return self.model_copy(update={"a_to_b": self.a_to_b_backup, "b_to_a": self.b_to_a_backup,
                                       "a_to_b_backup": None, "b_to_a_backup": None, "state": "up",
                                       "revision": self.revision + 1})

    def without_backup(self) -> ConnectionPlan:
        return self.model_copy(update={"a_to_b_backup": None, "b_to_a_backup": None, "revision": self.revision + 1})

    def crosses(self, switch: str | None = None, link: str | None = None) -> bool:
        for leg in (self.a_to_b, self.b_to_a):
            if switch is not None and switch in leg.path.switches:
                return True
            if link is not None and link in leg.path.links:
                return True
        return False
