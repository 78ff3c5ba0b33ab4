"""Pipeline revisions: what they hold, their states, and their records in the store.

A revision is one P4 program for the whole fabric: a P4Info and one device config per target
kind, named by the hash of that content. `RevisionBook` is the one owner of the store's
`pipeline_revision` records; the rollout (rollout.py) moves revisions through their states
through it, and a controller that starts reads from it which revision the fabric runs.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import logging
import time
import zlib

from finsy.proto import p4i
from google.protobuf import text_format
from pydantic import BaseModel, Field

from controller.fabric.store import StateStore
from controller.p4rt.schema import P4Schema

log = logging.getLogger("p4nsm.pipeline")

KIND = "pipeline_revision"


class State(enum.StrEnum):
    PUBLISHED = "published"  # stored, nothing asked of any switch yet
    VERIFYING = "verifying"  # VERIFY sent to every switch
    COMMITTING = "committing"  # every switch accepted; commits switch by switch
    IN_SYNC = "in_sync"  # the fabric's revision: every switch runs it (or gets it when it returns)
    SUPERSEDED = "superseded"  # was in sync, another revision replaced it
    ROLLED_BACK = "rolled_back"  # some switches committed it, then went back to the previous one
    TAINTED = "tainted"  # refused by every switch, or failed half-way: never pushed again
    HELD = "held"  # refused by some switches: nothing committed, waits for an operator


# A revision in one of these may not be published again: only `p4nsm pipeline delete` clears it.
STUCK = frozenset((State.TAINTED,))
# A rollout of it is under way (or was, when the controller stopped).
MOVING = frozenset((State.PUBLISHED, State.VERIFYING, State.COMMITTING))


class Event(BaseModel):
    state: State
    at: float
    note: str = ""


class Answer(BaseModel):
    """What one switch said to one step of a rollout."""

    switch: str
    step: str  # verify, commit, entries, rollback
    ok: bool
    code: str = "OK"  # the gRPC status code's name
    message: str = ""
    at: float = Field(default_factory=time.time)


class Revision(BaseModel):
    id: str  # content hash
    number: int  # 1 for the program a fresh store starts with, then in order of publication
    origin: str  # "settings" (the p4info_path/device config settings at start-up) or "apply"
    p4info: str  # text format
    configs: dict[str, str]  # target kind -> base64 of its p4_device_config
    cookie: int
    state: State
    asked_by: str
    asked_at: float
    previous: str | None = None  # the fabric's revision when this one was published
    history: list[Event] = []
    answers: list[Answer] = []
    committed: list[str] = []  # switches whose commit succeeded, for a restart mid-rollout

    def config(self, kind: str) -> bytes:
        return base64.b64decode(self.configs[kind])

    def p4_schema(self) -> P4Schema:
        return P4Schema(text_format.Parse(self.p4info, p4i.P4Info()))

    def p4info_bytes(self) -> bytes:
        return self.p4_schema().p4info.SerializeToString(deterministic=True)

    def move(self, state: State, note: str = "") -> None:
        self.state = state
        self.history.append(Event(state=state, at=time.time(), note=note))

    def view(self) -> dict:
        """What `p4nsm pipeline revisions` shows: everything but the program's bytes."""
        return self.model_dump(mode="json", exclude={"p4info", "configs"})


def pipeline_cookie(p4info: bytes, device_configs: list[bytes]) -> int:
    """Same program, same cookie: a restarted controller finds it on the switch and keeps it."""
    crc = zlib.crc32(p4info)
    for cfg in device_configs:
        crc = zlib.crc32(cfg, crc)
    return crc or 1


def content_id(p4info: bytes, configs: dict[str, bytes]) -> str:
    """The revision's name: the hash of its P4Info (serialized deterministically, so that two
    spellings of one P4Info are one revision) and its device configs by kind."""
    h = hashlib.sha256(p4info)
    for kind in sorted(configs):
        h.update(b"\0" + kind.encode() + b"\0" + hashlib.sha256(configs[kind]).digest())
    return h.hexdigest()[:16]


def make_revision(schema: P4Schema, configs: dict[str, bytes], origin: str, asked_by: str, number: int) -> Revision:
    p4info = schema.p4info.SerializeToString(deterministic=True)
    # The cookie is today's (one per distinct config), so that a store and switches from before
    # revisions existed keep their pipeline across the upgrade.
    return Revision(
        id=content_id(p4info, configs), number=number, origin=origin,
        p4info=text_format.MessageToString(schema.p4info),
        configs={k: base64.b64encode(v).decode() for k, v in sorted(configs.items())},
        cookie=pipeline_cookie(p4info, sorted(set(configs.values()))),
        state=State.PUBLISHED, asked_by=asked_by, asked_at=time.time())


class RevisionBook:
    """The `pipeline_revision` records: one per revision, keyed by its id."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.revisions: dict[str, Revision] = {}
        self.reload()

    def reload(self) -> None:
        """What the store holds now (a replica that just won its term reads etcd's records)."""
        self.revisions = {key: Revision.model_validate_json(value) for key, value in self.store.records(KIND).items()}

    def put(self, rev: Revision) -> None:
        self.revisions[rev.id] = rev
        self.store.put_record(KIND, rev.id, rev.model_dump_json())

    def delete(self, rev_id: str) -> None:
        self.revisions.pop(rev_id, None)
        self.store.delete_record(KIND, rev_id)

    async def durable(self) -> None:
        await self.store.durable()

    def next_number(self) -> int:
        return max((r.number for r in self.revisions.values()), default=0) + 1

    def current(self) -> Revision | None:
        """The fabric's revision: the one in sync (there is at most one)."""
        return next((r for r in self.revisions.values() if r.state == State.IN_SYNC), None)

    def find(self, prefix: str) -> Revision:
        """A revision by its id, a unique prefix of it, or its number; ValueError naming what was asked."""
        if prefix in self.revisions:
            return self.revisions[prefix]
        by_number = [r for r in self.revisions.values() if prefix.isdigit() and r.number == int(prefix)]
        hits = by_number or [r for r in self.revisions.values() if r.id.startswith(prefix)] if prefix else []
        if len(hits) != 1:
            known = ", ".join(f"{r.number}:{r.id}" for r in sorted(self.revisions.values(), key=lambda r: r.number))
            why = "no revision" if not hits else "more than one revision"
            raise ValueError(f"revision: {why} matches {prefix!r} (known: {known or 'none'})")
        return hits[0]

    def start(self, settings_rev: Revision, switches: set[str]) -> Revision:
        """The revision the fabric runs after a (re)start, settling a rollout the last run left
        unfinished: its revision if every switch had committed it, else the one before it.

        A revision published with `p4nsm pipeline apply` stays the fabric's across restarts; one
        that came from the settings follows them (an operator who edits p4info_path and restarts
        gets the new program, as before revisions existed)."""
        current = self.current()
        for rev in sorted(self.revisions.values(), key=lambda r: r.number):
            if rev.state not in MOVING:
                continue
            if rev.state == State.COMMITTING and switches <= set(rev.committed) and current is not None:
                current.move(State.SUPERSEDED, f"replaced by {rev.id}")
                self.put(current)
                rev.move(State.IN_SYNC, "every switch had committed it when the controller stopped")
                current = rev
            elif rev.state == State.COMMITTING:
                rev.move(State.ROLLED_BACK, f"the controller stopped mid-rollout ({len(rev.committed)} of {len(switches)} "
                                            f"switches committed): the fabric returns to {rev.previous}")
            else:
                rev.move(State.HELD, "the controller stopped before any switch committed it")
            log.warning("event=pipeline_rollout_settled revision=%s state=%s", rev.id, rev.state)
            self.put(rev)
        # A topology that gained a target kind the stored revision has no config for runs the settings'.
        fits = current is not None and set(settings_rev.configs) <= set(current.configs)
        if current is not None and fits and (current.origin != "settings" or current.id == settings_rev.id):
            return current
        known = self.revisions.get(settings_rev.id)
        rev = known or settings_rev.model_copy(update={"number": self.next_number()})
        if current is not None:
            current.move(State.SUPERSEDED, f"the settings name another program ({rev.id})")
            self.put(current)
        rev.move(State.IN_SYNC, "the program of the settings at start-up")
        self.put(rev)
        return rev
