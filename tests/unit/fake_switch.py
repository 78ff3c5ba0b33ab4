"""A switch client over the softswitch's own entity store, for tests without root: no gRPC, no
processes. It answers what controller.p4rt.client.SwitchClient answers (write with per-update
errors, read, `up`, `state_listeners`, `schema`, `name`, `sessions`), and lets a test hold
writes on an asyncio.Event or fail chosen updates, to force an interleaving."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import grpc
from finsy.proto import p4r, rpc_code

from controller.p4rt.errors import SwitchError, UpdateError
from controller.p4rt.schema import P4Schema
from softswitch.p4info_index import NSM_FABRIC, P4InfoIndex, P4RTError
from softswitch.tables import EntityStore

WriteMatch = Callable[[Sequence[p4r.Update]], bool]
UpdateMatch = Callable[[p4r.Update], bool]


def any_write(updates: Sequence[p4r.Update]) -> bool:
    return True


def with_type(kind: int) -> WriteMatch:
    """Writes that carry at least one update of this type (p4r.Update.INSERT/MODIFY/DELETE)."""
    return lambda updates: any(u.type == kind for u in updates)


class Hold:
    """Writes that match wait here until release(); `arrived` is set by the first of them."""

    def __init__(self, match: WriteMatch, once: bool) -> None:
        self.match = match
        self.once = once
        self.arrived = asyncio.Event()
        self.held: list[Sequence[p4r.Update]] = []
        self._released = asyncio.Event()

    def release(self) -> None:
        self._released.set()

    async def wait(self, updates: Sequence[p4r.Update]) -> None:
        self.held.append(updates)
        self.arrived.set()
        await self._released.wait()


class FakeSwitch:
    def __init__(self, name: str, schema: P4Schema) -> None:
        self.name = name
        self.schema = schema
        self.entities = EntityStore(P4InfoIndex(schema.p4info), NSM_FABRIC)
        self.up = asyncio.Event()
        self.primary = False
        self.sessions = 0
        self.state_listeners: list[Callable] = []
        self.packet_listeners: list[Callable] = []
        self.write_listeners: list[Callable] = []  # (client, updates, failed updates, seconds) per Write
        self.last_alive = 0.0
        self.pipeline_pushes = 0
        # the real client's replica role: one controller alone leads with the settings' id
        self.leader = True
        self.election_id = 10  # Settings().election_id
        self.primary_election_id = 0
        self.refused_writes = 0
        self.writes: list[list[p4r.Update]] = []  # every Write that reached the entity store
        self._holds: list[Hold] = []
        self._failures: list[tuple[UpdateMatch, int]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.came_up = asyncio.Event()  # set once the listeners of the latest session returned

    # --- what SwitchClient offers -----------------------------------------------------------

    def start(self) -> None:
        task = asyncio.get_running_loop().create_task(self.set_up())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.up.clear()

    async def write(self, updates: Sequence[p4r.Update]) -> None:
        if not updates:
            return
        if not self.up.is_set():
            raise SwitchError(self.name, grpc.StatusCode.UNAVAILABLE, "switch is not up")
        for hold in list(self._holds):
            if hold.match(updates):
                if hold.once:
                    self._holds.remove(hold)
                await hold.wait(updates)
        if not self.up.is_set():
            raise SwitchError(self.name, grpc.StatusCode.UNAVAILABLE, "switch went down")
        self.writes.append(list(updates))
        errors: list[UpdateError] = []
        for i, update in enumerate(updates):
            code = next((c for match, c in self._failures if match(update)), None)
            if code is not None:
                errors.append(UpdateError(i, code, "refused by the test"))
                continue
            try:
                self.entities.write(update)
            except P4RTError as e:
                errors.append(UpdateError(i, e.code, e.message))
            else:
                errors.append(UpdateError(i, rpc_code.OK, ""))
        failed = [e for e in errors if e.code != rpc_code.OK]
        for listener in self.write_listeners:
            listener(self, len(updates), failed, 0.0)
        if failed:
            raise SwitchError(self.name, grpc.StatusCode.UNKNOWN, f"{len(failed)} of {len(updates)} updates failed", errors)

    async def read(self, entities: Sequence[p4r.Entity]) -> list[p4r.Entity]:
        if not self.up.is_set():
            raise SwitchError(self.name, grpc.StatusCode.UNAVAILABLE, "not connected")
        return [out for ent in entities for out in self.entities.read(ent)]

    # --- what tests do to it ----------------------------------------------------------------

    async def set_up(self) -> None:
        self.came_up.clear()
        self.sessions += 1
        self.primary = True
        self.up.set()
        await self._notify(True, "test")
        self.came_up.set()

    async def set_down(self) -> None:
        self.up.clear()
        self.primary = False
        await self._notify(False, "test")

    async def _notify(self, up: bool, reason: str) -> None:
        for listener in self.state_listeners:
            result = listener(self, up, reason)
            if asyncio.iscoroutine(result):
                await result

    def hold(self, match: WriteMatch = any_write, once: bool = False) -> Hold:
        hold = Hold(match, once)
        self._holds.append(hold)
        return hold

    def unhold(self, hold: Hold) -> None:
        if hold in self._holds:
            self._holds.remove(hold)
        hold.release()

    def fail(self, match: UpdateMatch, code: int = rpc_code.RESOURCE_EXHAUSTED) -> None:
        self._failures.append((match, code))

    def heal(self) -> None:
        self._failures.clear()
