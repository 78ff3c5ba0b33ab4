"""Where the host side's kernel changes run: a few worker processes, started with `spawn`.

pyroute2 forks a helper for every IPRoute bound to a netns. Forking a process that runs gRPC
and thread-pool threads can deadlock the child (it inherits locks other threads held), and
netlink parsing in Python holds the GIL long enough to starve the event loop that answers
switch keepalives. Single-threaded workers avoid both, and run kernel changes in parallel."""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    # A controller killed without a chance to shut the pool down must not leave workers behind.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    # Killed before this worker got here (a spawn takes a while), the parent sent no signal.
    if os.getppid() != parent:
        os._exit(0)


class HostPool:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    async def warm(self) -> None:
        """Start the workers now rather than on the first Request (spawning takes ~0.3 s)."""
        await self.call(int)

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_die_with_parent, initargs=(os.getpid(),))
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
