"""Waiting for a condition, never for a fixed time: on a busy machine only the condition says
when the thing under test has happened."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(predicate: Callable[[], object], what: str = "the condition", timeout: float = 10.0) -> float:
    """Polls `predicate` until it is true; returns the seconds it took. Fails naming `what`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        assert loop.time() - start < timeout, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.01)
    return loop.time() - start
