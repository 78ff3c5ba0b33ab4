"""What both in-memory registries share: entries by name, Register/Unregister with the
registry path (docs/nsm_contract.md §9.2), Find with watch (§9.5), each registration's expiry
timer, and their bounds.

A name belongs to the identity that registered it first (`access.servicer_caller`: the mTLS
peer, else the `sub` of the path's first token, as NSM's `registry_client_allowed` has it):
Register over it or Unregister it from another identity is PERMISSION_DENIED (`Access`). A
registry holds at most `entries` names (RESOURCE_EXHAUSTED beyond) of at most `max_bytes` each
(INVALID_ARGUMENT), so what a caller can make it keep is bounded and expires.

With `records` (the store), each registration is also a record of the registry's `record_kind`
(registry/stored.py), written before Register and Unregister answer; `load()` rebuilds the
registry from them at start-up."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from controller.nsm.base import clock
from controller.nsm.base.access import Access, denied, servicer_caller
from controller.nsm.base.checks import Limits
from controller.nsm.base.errors import NsmError, abort, invalid
from controller.nsm.base.metadata import PATH_KEY, Credentials, credentials, last_value
from controller.nsm.base.tasks import Tasks
from controller.nsm.base.tokens import TokenSource
from controller.nsm.registry import path
from controller.nsm.registry.stored import Records, StoredRegistration
from controller.nsm.registry.watch import Watchers

log = logging.getLogger("p4nsm.registry")

M = TypeVar("M", bound=Message)  # the registration message
R = TypeVar("R")  # its Find response


@dataclasses.dataclass(frozen=True, slots=True)
class Bounds:
    expiration: float = 60.0  # longest life of a registration without a new Register (s)
    entries: int = 1024  # names one registry holds
    max_bytes: int = 16 * 1024  # serialized size of one registration


def require_name(kind: str, name: str) -> None:
    if not name:
        raise invalid("name", f"{kind}.Name can not be zero valued")


class MemoryRegistry(Generic[M, R]):
    kind = ""  # NetworkService or NetworkServiceEndpoint
    field = ""  # the message's field in queries and responses
    response_type: Callable[..., R]  # the response message class, called with keyword fields
    message_type: Callable[[], M]  # the registration message class
    record_kind = ""  # the store's record kind of its registrations
    matches: Callable[[M, M], bool]  # (query, stored)

    def __init__(self, tokens: TokenSource, limits: Limits, tasks: Tasks, bounds: Bounds = Bounds(),
                 access: Access = Access(), records: Records | None = None) -> None:
        self.tokens = tokens
        self.records = records
        self.limits = limits
        self.tasks = tasks
        self.bounds = bounds
        self.access = access
        self.entries: dict[str, M] = {}
        self.owners: dict[str, str] = {}  # name -> who registered it
        self.watchers: Watchers[R] = Watchers()
        self._timers: dict[str, asyncio.TimerHandle] = {}

    # --- what each registry defines ---------------------------------------------------------------

    def check(self, msg: M) -> None:
        raise NotImplementedError

    def store(self, msg: M, creds: Credentials, allowed: float) -> M:
        """Keep `msg` (already checked); `allowed` is what was left of the caller's deadline."""
        raise NotImplementedError

    async def expired(self, name: str) -> None:
        """`name`'s time is up (its timer was not re-armed since)."""
        log.info("%s=%s event=expired", self.log_key, name)
        self.unregister(name)
        await self.durable()

    log_key = ""  # how logs name a registration: service or endpoint

    # --- shared ----------------------------------------------------------------------------------

    def response(self, msg: M, deleted: bool = False) -> R:
        return self.response_type(**{self.field: msg}, deleted=deleted)

    def get(self, name: str) -> M | None:
        return self.entries.get(name)

    def unregister(self, name: str) -> M | None:
        self.tasks.cancel(self._timers.pop(name, None))
        self.owners.pop(name, None)
        msg = self.entries.pop(name, None)
        if msg is not None:
            if self.records is not None:
                self.records.delete_record(self.record_kind, name)
            self.watchers.publish(name, self.response(msg, deleted=True))
        return msg

    def keep(self, name: str, msg: M, expires: float) -> None:
        """Hold `msg` under `name` until `expires` (epoch seconds) unless kept again."""
        if self.records is not None:
            record = StoredRegistration.of(msg.SerializeToString(deterministic=True), expires, self.owners.get(name, ""))
            self.records.put_record(self.record_kind, name, record.model_dump_json())
        self._arm(name, msg, expires)

    def load(self) -> tuple[int, int]:
        """The registrations of the store, each with its expiry timer armed for the stored
        deadline; one whose deadline passed while the controller was down is dropped (its record
        too). Before the server serves a call. Returns (kept, dropped)."""
        if self.records is None:
            return 0, 0
        kept = dropped = 0
        for name, value in self.records.records(self.record_kind).items():
            try:
                record = StoredRegistration.model_validate_json(value)
                msg = self.message_type()
                msg.ParseFromString(record.message_bytes())
            except ValueError as e:  # pydantic's and protobuf's DecodeError are both ValueErrors
                log.error("%s=%s event=stored_unreadable error=%s", self.log_key, name, e)
                self.records.delete_record(self.record_kind, name)
                dropped += 1
                continue
            if record.expires <= clock.now():
                log.info("%s=%s event=expired_while_down expired_ago=%.1fs", self.log_key, name, clock.now() - record.expires)
                self.records.delete_record(self.record_kind, name)
                dropped += 1
                continue
            self.owners[name] = record.owner
            self._arm(name, msg, record.expires)
            kept += 1
        if kept or dropped:
            log.info("event=registry_loaded kind=%s kept=%d dropped=%d", self.kind, kept, dropped)
        return kept, dropped

    async def durable(self) -> None:
        """What was written so far is stored for good (before a caller hears it was)."""
        if self.records is None:
            return
        try:
            await self.records.durable()
        except Exception as e:  # the store says why (no quorum, leadership lost); the caller may retry
            raise NsmError(grpc.StatusCode.UNAVAILABLE, "", f"the registration could not be stored: {e}") from e

    def _arm(self, name: str, msg: M, expires: float) -> None:
        self.entries[name] = msg
        self.tasks.cancel(self._timers.pop(name, None))

        async def expire() -> None:
            if self._timers.get(name) is handle:
                del self._timers[name]
                await self.expired(name)

        handle = self.tasks.later(expires - clock.now(), expire, f"expire:{name}")
        self._timers[name] = handle

    def _bounded(self, msg: Any) -> None:
        size = msg.ByteSize()
        if size > self.bounds.max_bytes:
            raise invalid(self.field, f"is {size} bytes; at most {self.bounds.max_bytes} are accepted")
        if msg.name not in self.entries and len(self.entries) >= self.bounds.entries:
            raise NsmError(grpc.StatusCode.RESOURCE_EXHAUSTED, "name",
                           f"{len(self.entries)} {self.kind}s are registered, the most this registry holds")

    def _admitted(self, context: grpc.aio.ServicerContext, msg: Any) -> tuple[Credentials, list[str], path.RegistryPath]:
        """Whether the caller may touch `msg.name` (checked with no await before the change, so
        no other Register falls in between), the caller's credentials, the new path_ids and the
        path to echo."""
        metadata = context.invocation_metadata()
        creds = credentials(metadata)
        own_token, _ = self.tokens.issue()
        echoed, ids = path.update(path.parse(last_value(metadata, PATH_KEY)), creds.token, own_token, msg.path_ids)
        caller = servicer_caller(context, echoed.tokens[0])
        stored = self.entries.get(msg.name)
        owner = self.owners.get(msg.name, "")
        if stored is not None and not self.access.registration(caller, owner, stored):
            log.warning("%s=%s event=refused caller=%r owner=%r", self.log_key, msg.name, caller, owner)
            raise denied("name", caller, owner)
        self.owners.setdefault(msg.name, caller)
        return creds, ids, echoed

    async def Register(self, request: Any, context: grpc.aio.ServicerContext) -> M:
        try:
            self.check(request)
            self._bounded(request)
            creds, ids, echoed = self._admitted(context, request)
        except NsmError as e:
            await abort(context, e)
            raise  # abort raised already; this satisfies the type checker
        request.path_ids[:] = ids
        stored = self.store(request, creds, context.time_remaining() or 0.0)
        try:
            await self.durable()
        except NsmError as e:
            await abort(context, e)
            raise
        await context.send_initial_metadata(((PATH_KEY, echoed.to_json()),))
        return stored

    async def Unregister(self, request: Any, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        try:
            require_name(self.kind, request.name)
            _, _, echoed = self._admitted(context, request)
        except NsmError as e:
            await abort(context, e)
            raise
        self.unregister(request.name)
        try:
            await self.durable()
        except NsmError as e:
            await abort(context, e)
            raise
        await context.send_initial_metadata(((PATH_KEY, echoed.to_json()),))
        return empty_pb2.Empty()

    async def Find(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[R]:
        query = getattr(request, self.field)
        current: Sequence[R] = [self.response(m) for m in self.entries.values()]
        async for response in self.watchers.stream(current, lambda r: self.matches(query, getattr(r, self.field)), request.watch):
            yield response
