"""What both in-memory registries share: entries by name, Register/Unregister with the
registry path (docs/nsm_contract.md §9.2), and Find with watch (§9.5)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import empty_pb2

from controller.nsm.base.checks import Limits
from controller.nsm.base.errors import NsmError, abort, invalid
from controller.nsm.base.metadata import PATH_KEY, Credentials, credentials, last_value
from controller.nsm.base.tokens import TokenSource
from controller.nsm.registry import path
from controller.nsm.registry.watch import Watchers

M = TypeVar("M")  # the registration message
R = TypeVar("R")  # its Find response


def require_name(kind: str, name: str) -> None:
    if not name:
        raise invalid("name", f"{kind}.Name can not be zero valued")


class MemoryRegistry(Generic[M, R]):
    kind = ""  # NetworkService or NetworkServiceEndpoint
    field = ""  # the message's field in queries and responses
    response_type: Callable[..., R]  # the response message class, called with keyword fields
    matches: Callable[[M, M], bool]  # (query, stored)

    def __init__(self, tokens: TokenSource, limits: Limits) -> None:
        self.tokens = tokens
        self.limits = limits
        self.entries: dict[str, M] = {}
        self.watchers: Watchers[R] = Watchers()

    # --- what each registry defines ---------------------------------------------------------------

    def check(self, msg: M) -> None:
        raise NotImplementedError

    def store(self, msg: M, creds: Credentials, allowed: float) -> M:
        """Keep `msg` (already checked); `allowed` is what was left of the caller's deadline."""
        raise NotImplementedError

    # --- shared ----------------------------------------------------------------------------------

    def response(self, msg: M, deleted: bool = False) -> R:
        return self.response_type(**{self.field: msg}, deleted=deleted)

    def get(self, name: str) -> M | None:
        return self.entries.get(name)

    def unregister(self, name: str) -> M | None:
        msg = self.entries.pop(name, None)
        if msg is not None:
            self.watchers.publish(name, self.response(msg, deleted=True))
        return msg

    async def _admitted(self, context: grpc.aio.ServicerContext, msg: Any, check: Any) -> tuple[Credentials, list[str]]:
        """Check `msg`, update the registry path and echo it in the `path` response header."""
        try:
            check()
            metadata = context.invocation_metadata()
            creds = credentials(metadata)
            own_token, _ = self.tokens.issue()
            echoed, ids = path.update(path.parse(last_value(metadata, PATH_KEY)), creds.token, own_token, msg.path_ids)
        except NsmError as e:
            await abort(context, e)
            raise  # abort raised already; this satisfies the type checker
        await context.send_initial_metadata(((PATH_KEY, echoed.to_json()),))
        return creds, ids

    async def Register(self, request: Any, context: grpc.aio.ServicerContext) -> M:
        creds, ids = await self._admitted(context, request, lambda: self.check(request))
        request.path_ids[:] = ids
        return self.store(request, creds, context.time_remaining() or 0.0)

    async def Unregister(self, request: Any, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        await self._admitted(context, request, lambda: require_name(self.kind, request.name))
        self.unregister(request.name)
        return empty_pb2.Empty()

    async def Find(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[R]:
        query = getattr(request, self.field)
        current: Sequence[R] = [self.response(m) for m in self.entries.values()]
        async for response in self.watchers.stream(current, lambda r: self.matches(query, getattr(r, self.field)), request.watch):
            yield response
