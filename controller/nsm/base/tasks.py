"""Owner of the NSM layer's background tasks (timers, watches, downstream monitors), so that
none dies silently and stop() leaves none behind."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger("p4nsm.nsm")


class Tasks:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.owner}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def later(self, delay: float, job: Callable[[], Awaitable[Any]], name: str) -> asyncio.TimerHandle:
        """Run `job` after `delay` seconds; cancelling the handle before then drops it."""

        async def run() -> None:
            await job()

        def fire() -> None:
            self._timers.discard(handle)
            self.spawn(run(), name)

        handle = asyncio.get_running_loop().call_later(max(delay, 0.0), fire)
        self._timers.add(handle)
        return handle

    def cancel(self, handle: asyncio.TimerHandle | None) -> None:
        if handle is not None:
            handle.cancel()
            self._timers.discard(handle)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("owner=%s task=%s event=task_failed error=%r", self.owner, task.get_name(), exc,
                      exc_info=exc)

    async def stop(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
