"""Ordered, compensated writes of a connection's entries across switches.

BMv2 and Stratum accept only CONTINUE_ON_ERROR, so atomicity across updates and switches is
the controller's job: label entries first (no packet reaches them until a head entry pushes
their label), head entries last; on any rejection, delete what this call wrote, everywhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import grpc
from finsy.proto import p4r, rpc_code

from controller.fabric.entries import EntrySpec, by_switch
from controller.p4rt.client import SwitchClient
from controller.p4rt.errors import SwitchError
from controller.p4rt.schema import P4Schema, update

log = logging.getLogger("p4nsm.fabric")


class Programmer:
    def __init__(self, clients: dict[str, SwitchClient], schema: P4Schema) -> None:
        self.clients = clients
        self.schema = schema

    def to_entry(self, spec: EntrySpec, with_action: bool = True) -> p4r.TableEntry:
        if not with_action:
            return self.schema.table_entry(spec.table, dict(spec.match))
        return self.schema.table_entry(spec.table, dict(spec.match), spec.action, dict(spec.params))

    async def write_phase(self, kind: int, specs: list[EntrySpec], written: list[EntrySpec] | None = None) -> None:
        """Write `specs` on their switches in parallel (one batched Write per switch).

        Appends to `written` every spec the switches accepted (or may have accepted, when an RPC
        failed without per-update detail), then raises the first failure, if any.
        """
        groups = by_switch(specs)
        results = await asyncio.gather(
            *(self._write_switch(sw, kind, group) for sw, group in groups.items()), return_exceptions=True
        )
        first: BaseException | None = None
        for (sw, group), result in zip(groups.items(), results):
            if isinstance(result, SwitchError):
                if written is not None:
                    if result.errors:
                        written.extend(s for s, e in zip(group, result.errors) if e.code == rpc_code.OK)
                    elif result.code != grpc.StatusCode.UNAVAILABLE:
                        written.extend(group)  # unknown outcome: compensate as if written
                first = first or result
            elif isinstance(result, BaseException):
                first = first or result
            elif written is not None:
                written.extend(group)
        if first is not None:
            raise first

    async def _write_switch(self, switch: str, kind: int, specs: list[EntrySpec]) -> None:
        client = self.clients.get(switch)
        if client is None:
            raise SwitchError(switch, grpc.StatusCode.NOT_FOUND, "unknown switch")
        with_action = kind != p4r.Update.DELETE
        await client.write([update(kind, self.to_entry(s, with_action)) for s in specs])

    async def install(self, conn_id: str, phases: list[list[EntrySpec]]) -> None:
        """Insert phase by phase; on failure remove everything written and re-raise."""
        written: list[EntrySpec] = []
        try:
            for phase in phases:
                await self.write_phase(p4r.Update.INSERT, phase, written)
        except SwitchError as e:
            log.warning("connection=%s event=install_rejected switch=%s error=%s rollback=%d", conn_id, e.switch, e, len(written))
            await self.delete(conn_id, list(reversed(written)))
            raise

    async def delete(self, conn_id: str, specs: Iterable[EntrySpec]) -> list[EntrySpec]:
        """Delete, tolerating entries already gone. Returns those that could not be deleted
        (their switch is unreachable): the switch's reconcile removes them when it returns."""
        specs = list(specs)
        if not specs:
            return []
        heads = [s for s in specs if s.table.endswith("edge_classify")]
        rest = [s for s in specs if not s.table.endswith("edge_classify")]
        left: list[EntrySpec] = []
        for phase in (heads, rest):
            if not phase:
                continue
            try:
                await self.write_phase(p4r.Update.DELETE, phase)
            except SwitchError:
                pass
            # Re-check per switch which deletes truly failed, ignoring NOT_FOUND (already gone).
            left.extend(await self._undeleted(phase))
        if left:
            log.warning("connection=%s event=delete_deferred entries=%d switches=%s", conn_id, len(left), sorted({s.switch for s in left}))
        return left

    async def _undeleted(self, specs: list[EntrySpec]) -> list[EntrySpec]:
        left = []
        for sw, group in by_switch(specs).items():
            client = self.clients.get(sw)
            if client is None or not client.up.is_set():
                left.extend(group)
        return left
