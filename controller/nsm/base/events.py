"""A subscriber's buffer of pending events, one slot per entity (connection id, registration
name): a newer event replaces the one still waiting for the same entity.

So a slow subscriber never blocks the publisher (a Register, a Request) and its buffer never
grows past the number of entities, yet the last thing it reads about each entity is its
current state: nothing is lost that matters, only intermediate states are skipped.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LatestBuffer(Generic[K, V]):
    def __init__(self) -> None:
        self._pending: dict[K, V] = {}
        self._ready = asyncio.Event()
        self._closed: BaseException | None = None

    def put(self, key: K, value: V) -> None:
        self._pending.pop(key, None)
        self._pending[key] = value
        self._ready.set()

    def close(self, reason: BaseException) -> None:
        """Make the reader's next get() raise `reason` once the pending events are read."""
        self._closed = reason
        self._ready.set()

    def __len__(self) -> int:
        return len(self._pending)

    async def get(self) -> V:
        while not self._pending:
            if self._closed is not None:
                raise self._closed
            self._ready.clear()
            await self._ready.wait()
        key = next(iter(self._pending))
        return self._pending.pop(key)
