"""Replica roles: the election's verdicts become the controller's part.

Leader of a term: every switch client arbitrates with the term's election id (higher than any
earlier term's, so the switches depose the old primary themselves), then the controller's active
parts start (reconcile, link probes, heal, anti-entropy, the NSM API). Follower: every client keeps
its stream open as a backup with an id below every term's and never writes; nothing acts on
probes; the store follows etcd. Losing the term takes every client's writes away at once, then the
controller is built again as a follower (`Replication.stepped_down`): all of its state was made
under the lost term, and throwing it away is the one way to be sure nothing of it acts later.

With the SQLite store there is one replica and none of this runs (controller/runtime.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import zlib
from collections.abc import Awaitable, Callable, Mapping

from controller.aio import cancel_and_wait
from controller.cluster.election import Election, Term
from controller.p4rt.client import SwitchClient

log = logging.getLogger("p4nsm.replication")

# A term's id has the term in its high 64 bits: above every follower's id and every earlier term's.
TERM_SHIFT = 64


def leader_election_id(term: int) -> int:
    """The P4Runtime election id of the leader of `term` (etcd's revision at which it won)."""
    if term < 1:
        raise ValueError(f"term {term} must be >= 1")
    return term << TERM_SHIFT


def follower_election_id(unique: int) -> int:
    """A follower's id: its own (switches refuse two live clients with one id), never 0 (some
    targets refuse it), and below every term's."""
    return 1 + unique % ((1 << TERM_SHIFT) - 1)


def replica_number(replica_id: str) -> int:
    """A replica's name as the number its follower id is made of."""
    return zlib.crc32(replica_id.encode())


def term_of(election_id: int) -> int:
    """The term an election id belongs to; 0 for a follower's id."""
    return election_id >> TERM_SHIFT


@dataclasses.dataclass(frozen=True)
class Status:
    """One replica's part, as `p4nsm cluster` shows it."""

    replica_id: str
    role: str  # "leader" | "follower" | "stepped_down"
    term: int  # the term it leads (0 while it follows)
    election_id: int
    leader: str  # the leader's replica id as this one last saw it ("" when unknown)
    leader_nsm_address: str


class Replication:
    """Drives one replica's roles: a follower until the election names a term of this replica,
    then `lead(term)` brings up the active parts and every client arbitrates with the term's id;
    once that term is over (etcd says so, or a switch names a higher term's id) every write stops
    and `stepped_down` is set: the controller is then built again as a follower (p4nsm run)."""

    def __init__(self, clients: Mapping[str, SwitchClient], election: Election,
                 lead: Callable[[int], Awaitable[None]]) -> None:
        self.clients = clients
        self.election = election
        self._lead = lead
        # the lease id is unique among live leases, so among the live followers of a switch
        unique = election.lease if election.lease is not None else replica_number(election.replica)
        self.follower_id = follower_election_id(unique)
        self.role = "follower"
        self.term = 0
        self.election_id = self.follower_id
        self.stepped_down = asyncio.Event()
        # set once a term's takeover is done: the active parts run and every client arbitrates
        # with the term's id (role turns "leader" when the term is won, before that)
        self.leading = asyncio.Event()
        self.reason = ""
        self._task: asyncio.Task[None] | None = None
        for client in clients.values():
            client.set_role(self.follower_id, leader=False)
            client.deposed_listeners.append(self._on_deposed)

    def start(self) -> None:
        self.election.on_change.append(self._on_term)
        self._on_term(self.election.term)

    async def stop(self) -> None:
        if self._on_term in self.election.on_change:
            self.election.on_change.remove(self._on_term)
        await cancel_and_wait(self._task)
        self._task = None

    def status(self) -> Status:
        seen = self.election.leader or {}
        return Status(self.election.replica, self.role, self.term, self.election_id, seen.get("replica", ""),
                      seen.get("nsm_address", ""))

    def _on_term(self, term: Term | None) -> None:
        if self.role == "leader" and (term is None or term.revision != self.term):
            self.step_down(f"term {self.term} lost")
        elif self.role == "follower" and term is not None:
            self.term, self.role, self.election_id = term.revision, "leader", leader_election_id(term.revision)
            log.info("replica=%s event=leader term=%d election_id=%d", self.election.replica, self.term, self.election_id)
            self._task = asyncio.create_task(self._take_over(self.term), name="replication-lead")

    async def _take_over(self, term: int) -> None:
        # The active parts listen to the clients before the arbitration can make one primary.
        await self._lead(term)
        if self.role != "leader":
            return  # lost while it was starting: the clients stay followers
        for client in self.clients.values():
            client.set_role(self.election_id, leader=True)
        self.leading.set()

    def step_down(self, reason: str) -> None:
        """Stop every write of this replica now (queued ones fail; the switches refuse what is
        in flight once the next term arbitrates), and say the controller must be rebuilt."""
        if self.role == "stepped_down":
            return
        log.warning("replica=%s event=stepped_down term=%d reason=%r", self.election.replica, self.term, reason)
        self.role, self.reason = "stepped_down", reason
        self.leading.clear()
        for client in self.clients.values():
            client.set_role(self.follower_id, leader=False)
        self.stepped_down.set()

    def _on_deposed(self, client: SwitchClient, other: int) -> None:
        # A switch names a higher term's id: another replica won, whatever etcd has told us so far.
        if self.role == "leader" and other > self.election_id:
            self.step_down(f"switch {client.name} has a primary of term {term_of(other)} (election id {other})")
