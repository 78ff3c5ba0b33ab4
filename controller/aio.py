"""Small asyncio helpers shared by the controller's long-lived tasks: stopping a task, bounding
a stop step, and pausing the cyclic garbage collector around latency-critical or allocation-heavy work.

At 10,000 connections the heap holds millions of objects, and a full collection stalls the
event loop for ~0.2 s: long enough to delay a switch-over or to make keepalives look late.
Most garbage here is freed by reference counting anyway; cycles wait until the pause ends.
Pauses nest (a heal round inside an anti-entropy sweep): the collector runs again when the
outermost one ends, and only if it was running before.

What start-up builds (modules, protos, P4Info indexes, the topology) lives until the process
ends, yet every full collection walks it again: ~80 ms on an idle 2-core machine, and a flood of
refused requests makes garbage enough to trigger one every few seconds, long enough for a
keepalive to look late. `freeze_startup_heap` moves it out of the collector's sight once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Iterator
from typing import Any

log = logging.getLogger("p4nsm.controller")


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has unwound."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def within(step: Awaitable[Any], timeout: float, what: str) -> bool:
    """Run one stop step for at most `timeout` s; False when it did not end in time. A step that
    outlasts it is logged with where it waits and cancelled, and the caller goes on: one stuck
    part (grpc's aio server can hang in stop, grpc/grpc#28999) must not keep the others from
    stopping and the process from exiting. Its own exception, if it ends with one, is raised."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if done:
        task.result()
        return True
    log.warning("event=stop_step_timed_out part=%s timeout_s=%.1f waiting_at=%r", what, timeout, awaiting_at(task))
    task.cancel()
    await asyncio.wait({task}, timeout=1.0)
    return False


def awaiting_at(task: asyncio.Task[Any]) -> str:
    """Where a suspended task waits: each coroutine of its await chain, outermost first (the
    task's own get_stack shows only the outermost)."""
    frames: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None and len(frames) < 16:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            frames.append(f"{frame.f_code.co_name}@{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " > ".join(frames)


_depth = 0
_was_enabled = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    global _depth, _was_enabled
    if _depth == 0:
        _was_enabled = gc.isenabled()
        gc.disable()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _was_enabled:
            gc.enable()


def freeze_startup_heap() -> None:
    """Collect what start-up left behind, then exclude every surviving object from later
    collections (gc.freeze): they are the process's long-lived state, and cycles among them
    would never become garbage anyway."""
    gc.collect()
    gc.freeze()
