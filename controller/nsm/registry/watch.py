"""Find's watch streams (docs/nsm_contract.md §9.5): the current matches first, then every later change that
matches, until the client goes away. Each watcher has its own buffer (events.LatestBuffer)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Generic, TypeVar

from controller.nsm.base.events import LatestBuffer

R = TypeVar("R")  # a Find response message


class _Watcher(Generic[R]):
    def __init__(self, wants: Callable[[R], bool]) -> None:
        self.wants = wants
        self.buffer: LatestBuffer[str, R] = LatestBuffer()


class Watchers(Generic[R]):
    def __init__(self) -> None:
        self._watchers: set[_Watcher[R]] = set()

    def __len__(self) -> int:
        return len(self._watchers)

    def publish(self, name: str, response: R) -> None:
        for w in self._watchers:
            if w.wants(response):
                w.buffer.put(name, response)

    async def stream(self, current: Iterable[R], wants: Callable[[R], bool], watch: bool) -> AsyncIterator[R]:
        snapshot = [r for r in current if wants(r)]
        if not watch:
            for r in snapshot:
                yield r
            return
        watcher = _Watcher(wants)
        self._watchers.add(watcher)  # no await since the snapshot: nothing falls in between
        try:
            for r in snapshot:
                yield r
            while True:
                yield await watcher.buffer.get()
        finally:
            self._watchers.discard(watcher)
