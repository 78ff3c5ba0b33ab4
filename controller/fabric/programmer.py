"""Ordered, compensated writes of connection entities across switches.

BMv2 and Stratum accept only CONTINUE_ON_ERROR, so atomicity across updates and switches is
the controller's job: operations are applied phase by phase (entries.phases: data path tail
first, head last; deletes the other way), each phase one batched Write per switch in parallel,
and a rejected connect deletes what it wrote, everywhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable

import grpc
from finsy.proto import rpc_code

from controller.fabric import entries as E
from controller.fabric.codec import SpecCodec
from controller.p4rt.client import SwitchClient
from controller.p4rt.errors import SwitchError, UpdateError

log = logging.getLogger("p4nsm.fabric")

Op = tuple[str, E.Spec]
# What an update that met a stale switch becomes on its second try (see _write_switch).
_STALE: dict[tuple[str, int], str] = {(E.INSERT, rpc_code.ALREADY_EXISTS): E.MODIFY, (E.MODIFY, rpc_code.NOT_FOUND): E.INSERT}


class Programmer:
    def __init__(self, clients: dict[str, SwitchClient], codec: SpecCodec) -> None:
        self.clients = clients
        self.codec = codec
        self._codecs: dict[str, SpecCodec] = {}

    def codec_for(self, switch: str) -> SpecCodec:
        """The codec of the program the switch runs now: a pipeline rollout gives each switch
        its new P4Info when it commits there, and names resolve to that P4Info's ids."""
        client = self.clients.get(switch)
        if client is None or client.schema is self.codec.schema:
            return self.codec
        codec = self._codecs.get(switch)
        if codec is None or codec.schema is not client.schema:
            codec = self._codecs[switch] = SpecCodec(client.schema)
        return codec

    async def write_ops(self, ops: list[Op], done: list[Op] | None = None) -> None:
        """One phase: every switch's operations in one batched Write, all switches in parallel.

        Appends to `done` every operation the switches accepted (or may have accepted, when an
        RPC failed without per-update detail), then raises the first failure, if any."""
        groups = E.by_switch(ops)
        results = await asyncio.gather(*(self._write_switch(sw, group) for sw, group in groups.items()), return_exceptions=True)
        first: BaseException | None = None
        for (_sw, group), result in zip(groups.items(), results):
            if isinstance(result, SwitchError):
                if done is not None:
                    if result.errors:
                        done.extend(o for o, e in zip(group, result.errors) if e.code == rpc_code.OK)
                    elif result.code != grpc.StatusCode.UNAVAILABLE:
                        done.extend(group)  # unknown outcome: compensate as if written
                first = first or result
            elif isinstance(result, BaseException):
                first = first or result
            elif done is not None:
                done.extend(group)
        if first is not None:
            raise first

    async def _write_switch(self, switch: str, ops: list[Op]) -> None:
        """One switch's Write. Every key the controller writes is owned by the connection that
        writes it (labels and VLANs are allocated uniquely), so an INSERT that finds its key
        taken met an entity left behind by an earlier failure (a delete that timed out on a
        switch that stayed up), and a MODIFY that finds nothing met one that was lost. Those are
        written again as MODIFY and INSERT: a stale switch must not refuse every later try."""
        client = self.clients.get(switch)
        if client is None:
            raise SwitchError(switch, grpc.StatusCode.NOT_FOUND, "unknown switch")
        codec = self.codec_for(switch)
        try:
            await client.write([codec.to_update(op, spec) for op, spec in ops])
        except SwitchError as e:
            stale = [err.index for err in e.errors if (ops[err.index][0], err.code) in _STALE]
            if not stale:
                raise
            for i in stale:
                log.warning("switch=%s event=stale_entity op=%s key=%s action=%s", switch, ops[i][0], ops[i][1].key,
                            _STALE[(ops[i][0], e.errors[i].code)])
            errors = list(e.errors)
            try:
                await client.write([codec.to_update(_STALE[(ops[i][0], errors[i].code)], ops[i][1]) for i in stale])
                again = [UpdateError(i, rpc_code.OK, "") for i in stale]
            except SwitchError as e2:
                if not e2.errors:
                    raise
                again = [dataclasses.replace(err, index=i) for i, err in zip(stale, e2.errors)]
            for err in again:
                errors[err.index] = err
            if any(err.code != rpc_code.OK for err in errors):
                raise SwitchError(switch, e.code, f"{sum(err.code != rpc_code.OK for err in errors)} of {len(ops)} "
                                  "updates failed", errors) from None

    async def apply(self, conn_id: str, ops: Iterable[Op], *, compensate: bool = False) -> None:
        """Apply a diff phase by phase. With `compensate` (a fresh connect: inserts only), a
        rejection deletes everything this call wrote and re-raises."""
        done: list[Op] = []
        try:
            for phase in E.phases(ops):
                if all(op == E.DELETE for op, _ in phase):
                    # A delete that fails on an unreachable switch is finished by that switch's
                    # reconcile when it returns (the entity is no longer desired there).
                    await self.delete(conn_id, [s for _, s in phase])
                    continue
                await self.write_ops(phase, done)
        except SwitchError as e:
            if not compensate:
                raise
            written = [s for op, s in done if op == E.INSERT]
            log.warning("connection=%s event=install_rejected switch=%s error=%s rollback=%d", conn_id, e.switch, e, len(written))
            await self.delete(conn_id, written)
            raise

    async def delete(self, conn_id: str, specs: Iterable[E.Spec]) -> list[E.Spec]:
        """Delete in safe order, tolerating what is already gone. Returns what could not be
        deleted because its switch is unreachable: that switch's reconcile removes it on return."""
        specs = list(specs)
        left: list[E.Spec] = []
        for phase in E.phases((E.DELETE, s) for s in specs):
            try:
                await self.write_ops(phase)
            except SwitchError:
                pass  # NOT_FOUND is success here; unreachable switches are collected below
            left.extend(s for _, s in phase if not self._reachable(s.switch))
        if left:
            log.warning("connection=%s event=delete_deferred entities=%d switches=%s", conn_id, len(left), sorted({s.switch for s in left}))
        return left

    def _reachable(self, switch: str) -> bool:
        client = self.clients.get(switch)
        return client is not None and client.up.is_set()
