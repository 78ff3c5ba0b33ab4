"""Rolling a pipeline revision out over the fabric: the one owner of which program each switch
is told to run.

Before any switch is touched the revision is checked against the stored connections (fit.py).
Then every switch VERIFYs it: all refuse, it is tainted and never pushed again; some refuse,
it is held for an operator with every answer kept; all accept, it is committed switch by switch,
each switch drained first (fabric/drain.py: the connections that can avoid it move off it),
committed keeping its forwarding state where it can (RECONCILE_AND_COMMIT), its entities
rewritten through the new P4Info and read back, then given back to paths. A commit or read-back
that fails after others succeeded sends those back to the previous revision, and the revision is
tainted: the fabric never stays on two programs. Each step is in the store before the switches
see it, so a restarted controller settles an unfinished rollout (RevisionBook.start) and every
switch that connects gets the fabric's revision from its client (SwitchClient.adopt).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator

import grpc
from finsy.proto import p4i, p4r
from google.protobuf import text_format

from controller.fabric.connections import Fabric
from controller.fabric.drain import drain, restore
from controller.p4rt.client import SwitchClient, SwitchTarget
from controller.p4rt.errors import SwitchError
from controller.p4rt.schema import P4Schema
from controller.pipeline.fit import misfits, refusal
from controller.pipeline.revisions import MOVING, Answer, Revision, RevisionBook, State, make_revision
from controller.targets import Target, TargetError, TargetProfile

log = logging.getLogger("p4nsm.pipeline")

SVC = p4r.SetForwardingPipelineConfigRequest
# The switch could not answer: that is no verdict on the program, so it holds, never taints.
UNANSWERED = frozenset((grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED))
READ_BACK_TRIES = 3  # a connection changing meanwhile may make one comparison differ


class Refused(ValueError):
    """A revision refused before any switch was touched; the message names the field."""



class Rollout:
    def __init__(self, fabric: Fabric, clients: dict[str, SwitchClient], book: RevisionBook,
                 profiles: dict[str, TargetProfile], current_schema: P4Schema) -> None:
        self.fabric = fabric
        self.clients = clients
        self.book = book
        self.profiles = profiles  # switch -> its target's profile
        current = book.current()
        # None on an etcd replica until it leads (the runtime settles the book then); schema() parses on demand.
        self._schemas: dict[str, P4Schema] = {current.id: current_schema} if current is not None else {}
        self._lock = asyncio.Lock()
        self.rollouts = 0  # finished, whatever their outcome (tests and metrics)

    # --- the operator's commands --------------------------------------------------------------

    def view(self) -> list[dict]:
        return [r.view() for r in sorted(self.book.revisions.values(), key=lambda r: r.number)]

    async def delete(self, rev_id: str) -> dict:
        rev = self.book.find(rev_id)
        if rev.state == State.IN_SYNC:
            raise Refused(f"revision: {rev.id} (number {rev.number}) is the fabric's revision, in use on every switch; "
                          "apply another revision first")
        if rev.state in MOVING:
            raise Refused(f"revision: {rev.id} (number {rev.number}) is being rolled out ({rev.state}); wait for its outcome")
        self.book.delete(rev.id)
        self._schemas.pop(rev.id, None)
        await self.book.durable()
        log.info("event=pipeline_revision_deleted revision=%s state=%s", rev.id, rev.state)
        return {"deleted": rev.id, "number": rev.number, "state": rev.state}

    async def apply(self, p4info_text: object, configs_b64: object, asked_by: str) -> dict:
        """Publish a revision and roll it out; returns its view with the outcome in `state`."""
        schema, configs = self._parse(p4info_text, configs_b64)
        async with self._lock:
            rev = self._publishable(schema, configs, asked_by)
            if rev.state == State.IN_SYNC:
                return rev.view()
            started = time.monotonic()
            await self._roll_out(rev, schema)
            self.rollouts += 1
            log.info("event=pipeline_rollout_done revision=%s state=%s seconds=%.3f pipeline_rpcs=%d", rev.id, rev.state,
                     time.monotonic() - started, sum(c.pipeline_rpcs for c in self.clients.values()))
            return {**rev.view(), "seconds": round(time.monotonic() - started, 3)}

    def _parse(self, p4info_text: object, configs_b64: object) -> tuple[P4Schema, dict[str, bytes]]:
        if not isinstance(p4info_text, str):
            raise Refused("p4info: expected the P4Info in text format")
        if not isinstance(configs_b64, dict) or not all(isinstance(v, str) for v in configs_b64.values()):
            raise Refused("configs: expected target kind -> base64 of its device config")
        try:
            schema = P4Schema(text_format.Parse(p4info_text, p4i.P4Info()))
        except (text_format.ParseError, UnicodeDecodeError) as e:
            raise Refused(f"p4info: not a P4Info in text format ({e})") from None
        if not schema.p4info.tables:
            raise Refused("p4info: declares no table")
        configs: dict[str, bytes] = {}
        for kind, data in configs_b64.items():
            try:
                Target(kind)
            except ValueError:
                raise Refused(f"config: unknown target kind {kind!r}: known kinds are {', '.join(Target)}") from None
            try:
                configs[kind] = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise Refused(f"config {kind}: not base64") from None
        in_use: dict[str, list[str]] = {}
        for switch, prof in sorted(self.profiles.items()):
            in_use.setdefault(prof.kind.value, []).append(switch)
        for kind, switches in in_use.items():
            if kind not in configs:
                raise Refused(f"config: no device config for target kind {kind} (switches {', '.join(switches)}); "
                              f"give --config {kind}=FILE")
        for kind in configs:
            if kind not in in_use:
                raise Refused(f"config {kind}: no switch of this fabric is of target kind {kind}")
        for prof in {p.kind: p for p in self.profiles.values()}.values():
            try:
                prof.check_p4info(schema.p4info, "p4info")
                if prof.config_check is not None:
                    prof.config_check(configs[prof.kind.value], f"config {prof.kind.value}")
            except TargetError as e:
                raise Refused(str(e)) from None
        return schema, configs

    def _publishable(self, schema: P4Schema, configs: dict[str, bytes], asked_by: str) -> Revision:
        """The revision to roll out, or Refused before any switch is touched."""
        fresh = make_revision(schema, configs, "apply", asked_by, self.book.next_number())
        known = self.book.revisions.get(fresh.id)
        if known is not None and known.state == State.TAINTED:
            why = known.history[-1].note if known.history else ""
            raise Refused(f"revision: {known.id} (number {known.number}) is tainted ({why}); it is not pushed again. "
                          f"`p4nsm pipeline delete {known.id}` clears the taint")
        if known is not None and known.state == State.IN_SYNC:
            return known
        problems = misfits(schema, (s for sw in self.clients for s in self.fabric.desired(sw)))
        if problems:
            raise Refused(refusal(problems))
        down = sorted(n for n, c in self.clients.items() if not c.up.is_set())
        if down:
            raise Refused(f"switches: {', '.join(down)} not up; a rollout needs every switch's answer")
        current = self.book.current()
        rev = known or fresh
        rev.asked_by, rev.asked_at = asked_by, time.time()
        rev.previous = current.id if current is not None else None
        rev.answers, rev.committed = [], []
        return rev

    # --- the rollout ---------------------------------------------------------------------------

    async def _record(self, rev: Revision, state: State | None = None, note: str = "") -> None:
        if state is not None:
            rev.move(state, note)
            log.info("event=pipeline_revision revision=%s state=%s note=%r", rev.id, state, note)
        self.book.put(rev)
        await self.book.durable()

    def _answer(self, rev: Revision, switch: str, step: str, error: SwitchError | None = None, message: str = "") -> None:
        if error is None and not message:
            rev.answers.append(Answer(switch=switch, step=step, ok=True))
            return
        code = error.code.name if error is not None else "DATA_LOSS"
        text = str(error) if error is not None else message
        rev.answers.append(Answer(switch=switch, step=step, ok=False, code=code, message=text))
        log.warning("switch=%s event=pipeline_%s_failed code=%s error=%r", switch, step, code, text)

    def target(self, client: SwitchClient, rev: Revision) -> SwitchTarget:
        return dataclasses.replace(client.target, p4info=rev.p4info_bytes(),
                                   device_config=rev.config(self.profiles[client.name].kind.value), cookie=rev.cookie)

    def schema(self, rev: Revision) -> P4Schema:
        if rev.id not in self._schemas:
            self._schemas[rev.id] = rev.p4_schema()
        return self._schemas[rev.id]

    async def _roll_out(self, rev: Revision, schema: P4Schema) -> None:
        self._schemas[rev.id] = schema
        await self._record(rev, State.PUBLISHED, f"asked by {rev.asked_by}")
        await self._record(rev, State.VERIFYING)
        names = sorted(self.clients)
        results = await asyncio.gather(*(self._verify(self.clients[n], rev) for n in names))
        refused = [e for e in results if e is not None]
        if refused and len(refused) == len(names) and all(e.code not in UNANSWERED for e in refused):
            await self._record(rev, State.TAINTED, "every switch refused it")
            return
        if refused:
            who = ", ".join(e.switch for e in refused)
            await self._record(rev, State.HELD, f"{len(refused)} of {len(names)} switches refused it ({who}): nothing committed")
            return
        await self._record(rev, State.COMMITTING)
        previous = self.book.revisions.get(rev.previous or "")
        for name in names:
            if not await self._commit(self.clients[name], rev):
                if previous is not None:
                    await self._roll_back(rev, previous)
                await self._record(rev, State.ROLLED_BACK, f"{name} failed; {len(rev.committed)} committed switches "
                                                           f"sent back to {rev.previous}")
                await self._record(rev, State.TAINTED, f"failed on {name} after the VERIFY of every switch")
                return
        if previous is not None:
            previous.move(State.SUPERSEDED, f"replaced by {rev.id}")
            self.book.put(previous)
        await self._record(rev, State.IN_SYNC)

    async def _verify(self, client: SwitchClient, rev: Revision) -> SwitchError | None:
        try:
            await client.set_pipeline(SVC.VERIFY, self.target(client, rev))
        except SwitchError as e:
            self._answer(rev, client.name, "verify", e)
            return e
        self._answer(rev, client.name, "verify")
        return None

    @contextlib.asynccontextmanager
    async def _drained(self, rev: Revision, switch: str) -> AsyncIterator[None]:
        """The connections that can avoid `switch` are moved off it while its program changes,
        and may use it again afterwards (also when the change failed)."""
        report = await drain(self.fabric, switch)
        rev.answers.append(Answer(switch=switch, step="drain", ok=True, message=f"moved {len(report.moved)}, "
                                  f"unprotected {len(report.unprotected)}, stuck on it {len(report.stuck)}"))
        try:
            yield
        finally:
            restore(self.fabric, switch)

    async def _commit(self, client: SwitchClient, rev: Revision) -> bool:
        """Commit on one switch, write its entities through the new P4Info, read them back."""
        async with self._drained(rev, client.name):
            return await self._commit_drained(client, rev)

    async def _switch_program(self, client: SwitchClient, target: SwitchTarget, schema: P4Schema) -> str:
        """Commit `target` keeping the forwarding state where the target can (RECONCILE_AND_COMMIT:
        the entities carried over by name, no packet lost on it), else replacing it
        (VERIFY_AND_COMMIT: empty until rewritten). The client takes `schema` before writes may
        go to the switch again. Says which applied; SwitchError if neither."""
        why = f"target {self.profiles[client.name].kind} does not keep its entities across a commit"
        async with client.pipeline_change():
            if self.profiles[client.name].reconcile_commit:
                try:
                    await client.set_pipeline(SVC.RECONCILE_AND_COMMIT, target)
                    client.adopt(target, schema)
                    return "RECONCILE_AND_COMMIT: forwarding state kept"
                except SwitchError as e:
                    if e.code in UNANSWERED:
                        raise
                    why = f"RECONCILE_AND_COMMIT refused, {e.code.name}: {e}"
            await client.set_pipeline(SVC.VERIFY_AND_COMMIT, target)
            client.adopt(target, schema)
            return f"VERIFY_AND_COMMIT ({why})"

    async def _commit_drained(self, client: SwitchClient, rev: Revision) -> bool:
        target = self.target(client, rev)
        try:
            how = await self._switch_program(client, target, self.schema(rev))
        except SwitchError as e:
            self._answer(rev, client.name, "commit", e)
            return False
        rev.committed.append(client.name)
        rev.answers.append(Answer(switch=client.name, step="commit", ok=True, message=how))
        log.info("switch=%s event=pipeline_committed revision=%s how=%r", client.name, rev.id, how)
        await self._record(rev)
        problem = await self._rewrite(client.name)
        if isinstance(problem, SwitchError):
            self._answer(rev, client.name, "entries", problem)
        elif problem:
            self._answer(rev, client.name, "entries", message=problem)
        else:
            self._answer(rev, client.name, "entries")
        return not problem

    async def _rewrite(self, switch: str) -> SwitchError | str:
        """The switch's desired entities written and read back; what went wrong, or ""."""
        try:
            for _ in range(READ_BACK_TRIES):
                await self.fabric.reconcile(switch)
                have, want = set(await self.fabric.read_back(switch)), set(self.fabric.desired(switch))
                if have == want:
                    return ""
            return f"read back differs from the desired entities: {len(want - have)} missing, {len(have - want)} extra"
        except SwitchError as e:
            return e

    async def _roll_back(self, rev: Revision, previous: Revision) -> None:
        """Every switch that committed `rev` goes back to `previous`. Its client is told first, so
        a switch that cannot be reached now gets `previous` when it returns."""
        for name in reversed(rev.committed):
            client = self.clients[name]
            target = self.target(client, previous)
            client.adopt(target, self.schema(previous))
            async with self._drained(rev, name):
                try:
                    await self._switch_program(client, target, self.schema(previous))
                except SwitchError as e:
                    self._answer(rev, name, "rollback", e)
                    continue
                problem = await self._rewrite(name)
            if isinstance(problem, SwitchError):
                self._answer(rev, name, "rollback", problem)
            else:
                self._answer(rev, name, "rollback", message=problem)
