"""Desired state in etcd, shared by a fabric's replicas; the one that leads writes it.

The fabric calls its store synchronously on the hot path, so this store answers from a local
cache: etcd's state under the fabric's prefix, loaded at start and kept current by a watch
(every replica's, so a follower's cache is current when it takes over), with this replica's own
writes laid over it until their commit comes back through the watch. A write goes into the
cache at once and into a queue; a flusher sends the queue in transactions of at most 128
operations (etcd's default --max-txn-ops), each conditioned on the leader key's create_revision
still being the term the write was made in. A deposed leader's writes are therefore refused
by etcd itself, whatever it believes, and counted. `durable()` waits for the commit of what was
written so far and raises StoreRefused (not leading, or refused) or StoreUnavailable (no commit
within store_timeout: no quorum; the writes stay queued and go in when etcd is back, if the
term is still held).

Keys (under `/p4nsm/<fabric id>/`): `fabric` (which fabric and topology the state is of),
`leader` and `replicas/<id>` (controller/cluster/election.py), `c/<connection id>` (plan JSON),
`m/<key>` (meta), `r/<kind>/<key>` (records)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import aetcd
from aetcd import rtypes

from controller.aio import cancel_and_wait
from controller.cluster import etcd
from controller.cluster.election import Election, Term
from controller.fabric.model import ConnectionPlan
from controller.fabric.store import StoreRefused, StoreUnavailable

log = logging.getLogger("p4nsm.store")

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
_CONN, _META, _REC = "c/", "m/", "r/"


class FabricMismatch(Exception):
    """The etcd prefix holds the state of another fabric (another topology)."""


@dataclass
class _Pending:
    """A write of this replica not yet seen back from etcd. `acked`: the revision it was
    committed at (0 until then)."""

    seq: int
    value: bytes | None
    acked: int = 0


@dataclass
class _Batch:
    """Writes of one term in the order made, one value per key (the last)."""

    term: Term
    lo: int
    hi: int
    ops: dict[str, bytes | None] = field(default_factory=dict)
    sent: bool = False


class EtcdStore:
    def __init__(self, url: str, fabric_id: str, replica: str, *, topology: str, digest: str, lease_ttl: int,
                 timeout: float, info: dict[str, str] | None = None, leader_suspect: float = 0.5) -> None:
        etcd.parse_url(url)  # bad input is refused before anything starts
        self.url = url
        self.fabric_id = fabric_id
        self.replica = replica
        self.prefix = f"/p4nsm/{fabric_id}/"
        self.topology = topology
        self.digest = digest
        self.lease_ttl = lease_ttl
        self.timeout = timeout
        self.leader_suspect = leader_suspect
        self.info = info or {}
        self.client: aetcd.Client | None = None
        self.election: Election | None = None
        # etcd's state under the prefix (keys without it) at `revision`, and our writes over it
        self._committed: dict[str, bytes] = {}
        self.revision = 0
        self._overlay: dict[str, _Pending] = {}
        self._batches: list[_Batch] = []
        self._seq = 0
        self._term_start_seq = 0
        self._refused_max = 0  # highest sequence number of a refused write
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._revised = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.last_error = ""
        # counters (metrics, tests)
        self.committed_txns = 0
        self.refused_txns = 0
        self.refused_writes = 0  # writes refused by etcd's fence: made in a term no longer held
        self.refused_local = 0  # writes made while not leading: not sent
        self.retries = 0
        # (key under the prefix, value or None when deleted), for every change etcd sends
        self.listeners: list[Callable[[str, bytes | None], None]] = []

    # --- life -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, check the prefix is this fabric's (FabricMismatch), load the cache, follow
        etcd, and join the election (DuplicateReplica); returns without waiting to lead."""
        self.client = await etcd.connect(self.url, self.timeout)
        try:
            await self._claim_fabric()
            await self._reload()
            self._tasks.append(asyncio.create_task(self._follow(), name="etcd-store-watch"))
            self._tasks.append(asyncio.create_task(self._flush(), name="etcd-store-flush"))
            self.election = Election(self.client, self.prefix, self.replica, self.lease_ttl, self.info, grace=self.timeout,
                                     suspect=self.leader_suspect)
            self.election.before_lead.append(self._begin_term)
            await self.election.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.election is not None:
            await self.election.stop()
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks.clear()
        if self.client is not None:
            await self.client.close()
            self.client = None

    def close(self) -> None:
        """The synchronous close of a store never started (tests build controllers they do not
        start); a started one is stopped with `await stop()`."""
        for task in self._tasks:
            task.cancel()

    @property
    def term(self) -> Term | None:
        return self.election.term if self.election is not None else None

    async def _claim_fabric(self) -> None:
        assert self.client is not None
        key = f"{self.prefix}fabric".encode()
        mine = {"fabric": self.fabric_id, "topology": self.topology, "digest": self.digest}
        tx = self.client.transactions
        ok, responses = await self.client.transaction(
            compare=[tx.create(key) == 0], success=[tx.put(key, json.dumps(mine).encode())], failure=[tx.get(key)])
        if ok:
            log.info("fabric=%s event=claimed_prefix topology=%s digest=%s", self.fabric_id, self.topology, self.digest[:12])
            return
        held = json.loads(responses[0][0][0])
        if held.get("digest") != self.digest:
            raise FabricMismatch(
                f"etcd {self.url} holds fabric {held.get('fabric')!r} of topology {held.get('topology')!r} "
                f"(digest {str(held.get('digest'))[:12]}) under {self.prefix}; this controller's is topology "
                f"{self.topology!r} (digest {self.digest[:12]}): give this fabric its own store_fabric_id, or delete "
                f"{self.prefix} if the old state is to go")

    # --- the cache --------------------------------------------------------------------------

    async def _reload(self) -> None:
        assert self.client is not None
        got = await self.client.get_prefix(self.prefix.encode())
        n = len(self.prefix)
        self._committed = {kv.key.decode()[n:]: kv.value for kv in got}
        self.revision = got.header.revision
        self._revised.set()

    async def _follow(self) -> None:
        assert self.client is not None
        while True:
            try:
                watch = await self.client.watch_prefix(self.prefix.encode(), start_revision=self.revision + 1)
                try:
                    async for event in watch:
                        self._apply(event)
                finally:
                    with contextlib.suppress(Exception):
                        await watch.cancel()
            except asyncio.CancelledError:
                raise
            except aetcd.exceptions.RevisionCompactedError:
                log.warning("fabric=%s event=watch_compacted revision=%d", self.fabric_id, self.revision)
                with contextlib.suppress(Exception):
                    await self._reload()
            except Exception as e:
                etcd.reraise_cancel()
                self.last_error = f"watch: {e or type(e).__name__}"
                log.info("fabric=%s event=watch_retry revision=%d error=%s", self.fabric_id, self.revision, self.last_error)
                await asyncio.sleep(0.2)

    def _apply(self, event: rtypes.Event) -> None:
        revision = event.kv.mod_revision
        if revision < self.revision:
            return  # already loaded (one transaction's events share its revision: not <=)
        key = event.kv.key.decode()[len(self.prefix):]
        value: bytes | None
        if event.kind == rtypes.EventKind.DELETE:
            self._committed.pop(key, None)
            value = None
        else:
            self._committed[key] = value = event.kv.value
        self.revision = revision
        pending = self._overlay.get(key)
        if pending is not None and pending.acked and pending.acked <= revision:
            del self._overlay[key]
        self._revised.set()
        if key.startswith((_CONN, _META, _REC)):
            for listener in self.listeners:
                try:
                    listener(key, value)
                except Exception:
                    log.exception("fabric=%s event=store_listener_failed key=%s", self.fabric_id, key)

    async def _caught_up(self, revision: int) -> None:
        while self.revision < revision:
            self._revised.clear()
            await self._revised.wait()

    async def _begin_term(self, term: Term) -> None:
        """Before the term is announced: the cache holds everything etcd held when it was won
        (the leader key's creation comes through the same watch, after all that preceded it),
        and writes of earlier terms no longer show in it (their queue is refused by etcd)."""
        async with asyncio.timeout(self.timeout):
            await self._caught_up(term.revision)
        self._overlay.clear()
        self._term_start_seq = self._seq

    def _read(self, key: str) -> bytes | None:
        pending = self._overlay.get(key)
        return pending.value if pending is not None else self._committed.get(key)

    def _scan(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        """Keys under `prefix` (without it) with their values, our writes included, by key."""
        keys = {k for k in self._committed if k.startswith(prefix)} | {k for k in self._overlay if k.startswith(prefix)}
        n = len(prefix)
        for key in sorted(keys):
            value = self._read(key)
            if value is not None:
                yield key[n:], value

    # --- writes -----------------------------------------------------------------------------

    def _write(self, key: str, value: bytes | None) -> None:
        self._seq += 1
        term = self.term
        if term is None:
            # Nothing to fence it with: refused here, and the cache stays etcd's.
            self.refused_local += 1
            self._refused_max = self._seq
            log.warning("fabric=%s event=write_refused reason=not_leading key=%s", self.fabric_id, key)
            return
        self._overlay[key] = _Pending(self._seq, value)
        last = self._batches[-1] if self._batches else None
        if last is None or last.sent or last.term != term:
            last = _Batch(term, self._seq, self._seq)
            self._batches.append(last)
        last.ops[key] = value
        last.hi = self._seq
        self._wake.set()

    async def _flush(self) -> None:
        while True:
            if not self._batches:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._batches[0]
            batch.sent = True
            items = list(batch.ops.items())
            done = 0
            while done < len(items):
                chunk = items[done:done + MAX_TXN_OPS]
                try:
                    # A call in flight when etcd lost its raft leader hangs to its deadline, while
                    # the new leader is there within a second: try again after a short wait.
                    async with asyncio.timeout(min(0.5, self.timeout / 4)):
                        ok, revision = await self._commit(batch.term, chunk)
                except (aetcd.ClientError, TimeoutError) as e:
                    etcd.reraise_cancel()
                    self.retries += 1
                    self.last_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                    log.info("fabric=%s event=commit_retry ops=%d error=%s", self.fabric_id, len(chunk), self.last_error)
                    await asyncio.sleep(0.1)
                    continue
                self._settle(batch, chunk, ok, revision)
                done += len(chunk)
            self._batches.pop(0)
            self._progress.set()
            self._progress = asyncio.Event()

    async def _commit(self, term: Term, chunk: list[tuple[str, bytes | None]]) -> tuple[bool, int]:
        assert self.client is not None
        tx = self.client.transactions
        ops = [tx.delete((self.prefix + k).encode()) if v is None else tx.put((self.prefix + k).encode(), v) for k, v in chunk]
        ok, responses = await self.client.transaction(
            compare=[tx.create(f"{self.prefix}leader".encode()) == term.revision], success=ops, failure=[])
        revision = 0
        if ok and responses:
            first = responses[0]
            revision = (first.response_put if first.WhichOneof("response") == "response_put" else first.response_delete_range).header.revision
        return ok, revision

    def _settle(self, batch: _Batch, chunk: list[tuple[str, bytes | None]], ok: bool, revision: int) -> None:
        if ok:
            self.committed_txns += 1
        else:
            self.refused_txns += 1
            self.refused_writes += len(chunk)
            self._refused_max = max(self._refused_max, batch.hi)
            log.warning("fabric=%s event=writes_refused ops=%d term=%d reason=term_no_longer_held",
                        self.fabric_id, len(chunk), batch.term.revision)
        for key, _ in chunk:
            pending = self._overlay.get(key)
            if pending is None or pending.seq > batch.hi:
                continue  # written again since: that write decides
            if not ok:
                del self._overlay[key]  # etcd's value shows again
            elif self.revision >= revision:
                del self._overlay[key]  # the watch brought it already
            else:
                pending.acked = revision

    async def durable(self) -> None:
        """Returns once every write made so far is committed in etcd under this replica's term.
        Raises StoreRefused when this replica does not lead, or a write of its term was refused;
        StoreUnavailable when they are not committed within store_timeout (they stay queued)."""
        term = self.term
        if term is None:
            raise StoreRefused(f"store: replica {self.replica} does not lead fabric {self.fabric_id}; its writes are refused")
        target = self._seq
        try:
            async with asyncio.timeout(self.timeout):
                while self._batches and self._batches[0].lo <= target:
                    await self._progress.wait()
        except TimeoutError:
            raise StoreUnavailable(
                f"store: etcd {self.url} did not commit this replica's writes within {self.timeout:g} s "
                f"({self.last_error or 'no answer'}): no quorum? they stay queued") from None
        if self._refused_max > self._term_start_seq or self.term != term:
            raise StoreRefused(f"store: writes of replica {self.replica} were refused: term {term.revision} of fabric "
                               f"{self.fabric_id} is no longer held")

    # --- the Store interface ----------------------------------------------------------------

    def put(self, plan: ConnectionPlan) -> None:
        self._write(_CONN + plan.id, plan.model_dump_json().encode())

    def put_many(self, plans: list[ConnectionPlan]) -> None:
        """Each plan in the queue; more than 128 go in several transactions."""
        for plan in plans:
            self.put(plan)

    def delete(self, conn_id: str) -> None:
        self._write(_CONN + conn_id, None)

    def get(self, conn_id: str) -> ConnectionPlan | None:
        value = self._read(_CONN + conn_id)
        return ConnectionPlan.model_validate_json(value) if value is not None else None

    def all(self) -> list[ConnectionPlan]:
        return [ConnectionPlan.model_validate_json(v) for _, v in self._scan(_CONN)]

    def count(self) -> int:
        return sum(1 for _ in self._scan(_CONN))

    def size_bytes(self) -> int:
        """Bytes of the fabric's keys and values (etcd's own files hold every fabric and history)."""
        return sum(len(k) + len(v) for k, v in self._scan(""))

    def set_meta(self, key: str, value: str) -> None:
        self._write(_META + key, value.encode())

    def get_meta(self, key: str) -> str | None:
        value = self._read(_META + key)
        return value.decode() if value is not None else None

    def _record_key(self, kind: str, key: str) -> str:
        if not kind or "/" in kind:
            raise ValueError(f"record kind {kind!r}: non-empty and without '/'")
        return f"{_REC}{kind}/{key}"

    def put_record(self, kind: str, key: str, value: str) -> None:
        self._write(self._record_key(kind, key), value.encode())

    def delete_record(self, kind: str, key: str) -> None:
        self._write(self._record_key(kind, key), None)

    def get_record(self, kind: str, key: str) -> str | None:
        value = self._read(self._record_key(kind, key))
        return value.decode() if value is not None else None

    def records(self, kind: str) -> dict[str, str]:
        return {k: v.decode() for k, v in self._scan(self._record_key(kind, ""))}
