"""The SDK's retry (docs/nsm_contract.md §8.2, §9.6): try again every interval until the call succeeds or the
time allowed is over; the last failure is raised then. Unlike Go, a refusal that no retry can
change (a malformed request, a denied one) is raised at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from controller.nsm.base import clock

log = logging.getLogger("p4nsm.sdk")

T = TypeVar("T")

FINAL = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED})


async def retry(what: str, call: Callable[[], Awaitable[T]], interval: float, give_up_after: float | None = None) -> T:
    deadline = None if give_up_after is None else clock.now() + give_up_after
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except grpc.aio.AioRpcError as e:
            if e.code() in FINAL or (deadline is not None and clock.now() + interval >= deadline):
                raise
            log.log(logging.INFO if attempt == 1 else logging.DEBUG, "event=retry what=%s attempt=%d code=%s error=%s",
                    what, attempt, e.code().name, e.details())
        await asyncio.sleep(interval)
