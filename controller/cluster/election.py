"""Leader election of a fabric's replicas by an etcd lease.

A replica's session is one lease (TTL `store_lease_ttl`) kept alive every TTL/3. Bound to it:
- `<prefix>replicas/<replica id>`: this replica is running. A second process starting with the
  same id finds the key held by another instance and is refused (DuplicateReplica), after
  waiting out a crashed predecessor's lease.
- `<prefix>leader`: created only where absent (a transaction comparing its create_revision to
  0), so at most one replica holds it. The **term** is the etcd revision at which the holder
  created it: etcd revisions only grow, so every later term has a higher one, whoever wins it.
  The fabric's writes compare the key's create_revision to their term (controller/fabric/
  etcd_store.py), so a deposed leader's writes are refused by etcd itself.
- `<prefix>heartbeat`: the leader rewrites it every `suspect`/5 s (written with the leader key
  when won, then by a transaction conditioned on the leader key's create_revision being the
  term, so a deposed leader cannot).

A leader that dies is replaced without waiting for its lease: etcd expires leases only 1.0 to
1.5 s after their last renewal (its lessor looks every 500 ms), most of a failover. A follower
that hears no heartbeat for `suspect` s, while etcd itself answered it, revokes the lease the
leader key is bound to; etcd deletes the key at once and the followers' waiting campaigns run.
It revokes only the lease of the leader key it watched (same create_revision, read back just
before), and only after reading back that the heartbeat did not move (its own event loop may be
the late one), so two followers cannot depose the next leader. A leader too slow to heartbeat
for `suspect` s (stopped, starved) loses its term as if its lease had expired, and learns it the
same way. A leader that never heartbeats (no heartbeat key bound to its lease) is left to its
lease, as before.

Leadership ends when etcd says so: a renewal answers that the lease is gone, or the leader key
disappears. While etcd cannot answer (it elects a new raft leader after losing one: 0.6 to over
1 s, longer than a 1 s lease; etcd then gives every lease its full TTL again), the term stands;
only when no renewal has succeeded for TTL + `grace` (from when the last good one was sent) does
the replica give it up unheard, being cut off. Meanwhile etcd may have let the lease expire and
another replica may lead: that is safe, because what the term protects is fenced by others, not
by this belief (etcd refuses the writes, the switches a lower election id). A session whose
lease is lost is replaced by a new one (the old lease is revoked when etcd can be reached), and
the replica campaigns again as a follower: a term, once lost, never comes back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aetcd
from aetcd import rtypes

from controller.aio import cancel_and_wait
from controller.cluster.etcd import reraise_cancel

log = logging.getLogger("p4nsm.cluster")


@dataclass(frozen=True)
class Term:
    """One replica's leadership. `revision`: the etcd revision at which it created the leader
    key (a later term always has a higher one: derive P4Runtime election ids from it);
    `lease`: the lease the key is bound to."""

    revision: int
    lease: int
    replica: str


class DuplicateReplica(Exception):
    """Another running process holds this replica's id."""


class Election:
    """Campaigns for `<prefix>leader` while started. Learn the outcome from `term` (the term this
    replica leads, None while it follows), the `on_change` callbacks (called with the new term
    when won, with None when lost), `wait_term()`, and `leader` (the leader key's value as
    last seen: its `replica` and the `info` it registered, e.g. its NSM address).

    `before_lead` hooks run (awaited, in order) after the leader key is won and before `term` is
    set and `on_change` runs: the store brings its cache up to date there, so that whoever acts
    on the new term reads the state etcd holds at it."""

    def __init__(self, client: aetcd.Client, prefix: str, replica: str, ttl: int, info: dict[str, str] | None = None,
                 grace: float = 2.0, suspect: float = 0.5) -> None:
        if not 0 <= suspect < ttl:
            raise ValueError(f"leader suspect window {suspect} s must be >= 0 and below the lease TTL {ttl} s")
        self.client = client
        self.prefix = prefix
        self.replica = replica
        self.ttl = ttl
        self.grace = grace
        # 0: no heartbeat, no suspicion (a dead leader is replaced when its lease expires)
        self.suspect = suspect
        self.instance = uuid.uuid4().hex
        self.info = {"replica": replica, "instance": self.instance, "host": socket.gethostname(), "pid": str(os.getpid()),
                     **(info or {})}
        self.leader_key = f"{prefix}leader".encode()
        self.replica_key = f"{prefix}replicas/{replica}".encode()
        self.heartbeat_key = f"{prefix}heartbeat".encode()
        self.term: Term | None = None
        self.leader: dict[str, str] | None = None
        self.lease: int | None = None
        self.on_change: list[Callable[[Term | None], None]] = []
        self.before_lead: list[Callable[[Term], Awaitable[None]]] = []
        self.terms_won = 0
        self.terms_lost = 0
        self._changed = asyncio.Event()
        # set while the campaign watches the leader key: a follower ready to take over
        self.watching = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._held_until = 0.0
        # the leader's heartbeat task while it holds the leader key
        self.beat: asyncio.Task[None] | None = None
        self._beat_term: Term | None = None
        # the last time an etcd call of this replica failed: silence is counted from then too,
        # since a leader's heartbeats stall as well while etcd has no raft leader
        self._trouble_at = 0.0
        # leaders this replica found silent and revoked the lease of (tried to: another follower
        # may have been first)
        self.leaders_suspected = 0

    # --- the interface ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the first session (raises DuplicateReplica), then campaign in the background."""
        self._stopping = False
        await self._open_session()
        self._task = asyncio.create_task(self._run(), name=f"election-{self.replica}")

    async def stop(self) -> None:
        """Stop campaigning and revoke the lease: the leader key goes at once, so a follower
        takes over without waiting for the TTL."""
        # A flag as well as the cancel: a cancel that meets a keepalive reply in aetcd's stream can
        # be lost (seen: the keepalive slept on and stop() waited for ever), the flag cannot.
        self._stopping = True
        await cancel_and_wait(self._task)
        self._task = None
        self._set_term(None, "stopped")
        await self._revoke()

    async def wait_term(self, timeout: float | None = None) -> Term:
        """The term this replica leads, once it does (TimeoutError after `timeout`)."""
        async with asyncio.timeout(timeout):
            while self.term is None:
                self._changed.clear()
                await self._changed.wait()
        return self.term

    async def wait_following(self, timeout: float | None = None) -> None:
        """Returns once this replica does not lead."""
        async with asyncio.timeout(timeout):
            while self.term is not None:
                self._changed.clear()
                await self._changed.wait()

    async def replicas(self) -> dict[str, dict[str, str]]:
        """Every running replica of the fabric, by id, with what it registered."""
        out = {}
        for kv in await self.client.get_prefix(f"{self.prefix}replicas/".encode()):
            out[kv.key.decode().rpartition("/")[2]] = json.loads(kv.value)
        return out

    # --- sessions ---------------------------------------------------------------------------

    async def _open_session(self) -> None:
        loop = asyncio.get_running_loop()
        value = json.dumps(self.info).encode()
        tx = self.client.transactions
        for attempt in range(2):
            sent = loop.time()
            lease = await self.client.lease(self.ttl)
            ok, responses = await self.client.transaction(
                compare=[tx.create(self.replica_key) == 0],
                success=[tx.put(self.replica_key, value, lease=lease.id)],
                failure=[tx.get(self.replica_key)])
            if not ok:
                held_value, kv = responses[0][0]
                holder = json.loads(held_value)
                # An earlier session of this very process (its lease not yet expired): take it over.
                ok = holder.get("instance") == self.instance
                if ok:
                    await self.client.put(self.replica_key, value, lease=lease.id)
            if ok:
                self.lease = lease.id
                self._held_until = sent + lease.ttl
                log.info("replica=%s event=session lease=%x ttl=%d", self.replica, lease.id, lease.ttl)
                return
            with contextlib.suppress(aetcd.ClientError):
                await self.client.revoke_lease(lease.id)
            if attempt == 0:
                # A crashed predecessor's key goes with its lease: wait that long before refusing
                # (TTLs are whole seconds; etcd looks for expired leases every 500 ms).
                with contextlib.suppress(TimeoutError):
                    await self._wait_deleted(self.replica_key, kv.header.revision + 1, None, timeout=await self._remaining(kv.lease) + 1.5)
        raise DuplicateReplica(
            f"replica {self.replica!r} is already running (host {holder.get('host')}, pid {holder.get('pid')}, key "
            f"{self.replica_key.decode()}): give every replica of the fabric its own store_replica_id")

    async def _remaining(self, lease_id: int) -> float:
        try:
            info = await self.client.get_lease_info(lease_id, keys=False)
        except aetcd.ClientError:  # gone already
            return 0.0
        return max(float(info.TTL), 0.0)

    async def _revoke(self) -> None:
        if self.lease is None:
            return
        lease, self.lease = self.lease, None
        try:
            async with asyncio.timeout(self.ttl + 1.0):
                await self.client.revoke_lease(lease)
        except Exception as e:  # unreachable, or expired already: it lapses on its own
            log.info("replica=%s event=revoke_failed lease=%x error=%s", self.replica, lease, e)

    async def _run(self) -> None:
        while True:
            keep = asyncio.create_task(self._keepalive(), name=f"keepalive-{self.replica}")
            campaign = asyncio.create_task(self._campaign(), name=f"campaign-{self.replica}")
            try:
                await keep  # returns when the lease is lost
            finally:
                await cancel_and_wait(campaign)
                await cancel_and_wait(keep)
                await self._stop_beat()
            if self._stopping:
                return
            self._set_term(None, "lease_lost")
            await self._revoke()
            while True:
                try:
                    await self._open_session()
                    break
                except DuplicateReplica as e:
                    # Our key lapsed while we were cut off and another process took the id.
                    log.error("replica=%s event=identity_lost error=%s", self.replica, e)
                    raise
                except Exception as e:
                    reraise_cancel()
                    log.info("replica=%s event=session_retry error=%s", self.replica, e)
                    await asyncio.sleep(min(1.0, self.ttl / 3))

    async def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.ttl / 3
        assert self.lease is not None
        lease = self.lease
        while not self._stopping:
            sent = loop.time()
            give_up = self._held_until + self.grace
            if sent >= give_up:
                log.warning("replica=%s event=lease_lost lease=%x reason=etcd_unreachable", self.replica, lease)
                return
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for loses a cancel that meets a reply
                async with asyncio.timeout(min(interval, give_up - sent)):
                    reply = await self.client.refresh_lease(lease)
            except (TimeoutError, aetcd.ClientError) as e:
                reraise_cancel()
                log.info("replica=%s event=keepalive_failed lease=%x error=%s", self.replica, lease, e or "timeout")
                self._trouble_at = loop.time()
                reply = None
            reraise_cancel()
            if reply is not None:
                if reply.TTL <= 0:
                    log.warning("replica=%s event=lease_lost lease=%x reason=expired", self.replica, lease)
                    return
                self._held_until = sent + reply.TTL
            pause = min(sent + interval, give_up) - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)

    async def _campaign(self) -> None:
        tx = self.client.transactions
        assert self.lease is not None
        lease = self.lease
        value = json.dumps(self.info).encode()
        # the first heartbeat goes with the win: a follower that reads the key finds it at once
        beat = [tx.put(self.heartbeat_key, self.replica.encode(), lease=lease)] if self.suspect else []
        while True:
            try:
                ok, responses = await self.client.transaction(
                    compare=[tx.create(self.leader_key) == 0],
                    success=[tx.put(self.leader_key, value, lease=lease), *beat],
                    failure=[tx.get(self.leader_key), tx.get(self.heartbeat_key)])
                suspect: asyncio.Task[None] | None = None
                if ok:
                    revision = responses[0].response_put.header.revision
                    watch_from = revision + 1
                else:
                    held_value, kv = responses[0][0]
                    self.leader = json.loads(held_value)
                    # our own key, made by an earlier try whose answer was lost
                    revision = kv.create_revision if kv.lease == lease else 0
                    # From now, not from the key's last change: etcd serves a watch that starts in
                    # the past from a catch-up loop that runs every 100 ms, a live one at once.
                    watch_from = kv.header.revision + 1
                    if not revision and self.suspect:
                        heard = responses[1][0][1] if responses[1] else None
                        suspect = asyncio.create_task(self._suspect(kv, heard, watch_from), name=f"suspect-{self.replica}")
                if revision:
                    term = Term(revision, lease, self.replica)
                    if self.suspect and (self.beat is None or self.beat.done() or self._beat_term != term):
                        await self._stop_beat()  # one of an earlier term whose end we missed
                        self._beat_term = term
                        self.beat = asyncio.create_task(self._heartbeat(term), name=f"heartbeat-{self.replica}")
                    if term != self.term:  # not a watch resumed within the term it was won
                        for hook in self.before_lead:
                            await hook(term)
                        self.leader = self.info
                        self._set_term(term)
                else:
                    self._set_term(None, "held_by_another")  # we missed the delete
                try:
                    await self._wait_deleted(self.leader_key, watch_from, self.watching)
                finally:
                    await cancel_and_wait(suspect)
                await self._stop_beat()
                self._set_term(None, "leader_key_deleted")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # etcd unreachable, a member gone under the watch: the term stands (the
                # keepalive decides when it is lost); look again.
                reraise_cancel()
                log.info("replica=%s event=campaign_retry error=%s", self.replica, e)
                self._trouble_at = asyncio.get_running_loop().time()
                await asyncio.sleep(min(1.0, self.ttl / 3))

    # --- heartbeat and suspicion ------------------------------------------------------------

    async def _stop_beat(self) -> None:
        beat, self.beat = self.beat, None
        await cancel_and_wait(beat)

    async def _heartbeat(self, term: Term) -> None:
        """Rewrite the heartbeat key every suspect/5 s while the leader key is this term's. Each
        write has suspect/2 s: one stuck in an etcd without raft leader (it would hang to its
        deadline) is left for the next."""
        loop = asyncio.get_running_loop()
        tx = self.client.transactions
        interval = self.suspect / 5
        last = loop.time()
        while True:
            sent = loop.time()
            try:
                async with asyncio.timeout(self.suspect / 2):
                    ok, _ = await self.client.transaction(
                        compare=[tx.create(self.leader_key) == term.revision],
                        success=[tx.put(self.heartbeat_key, self.replica.encode(), lease=term.lease)], failure=[])
            except (TimeoutError, aetcd.ClientError) as e:
                reraise_cancel()
                log.info("replica=%s event=heartbeat_failed term=%d error=%s", self.replica, term.revision, str(e) or type(e).__name__)
                ok = True
            else:
                done = loop.time()
                # Followers see the gap between commits: past half the window, a busier machine
                # would make them suspect this live leader.
                if done - last > self.suspect / 2:
                    log.warning("replica=%s event=heartbeat_late term=%d gap_ms=%.0f suspect_ms=%.0f", self.replica,
                                term.revision, (done - last) * 1000, self.suspect * 1000)
                last = done
            if not ok:
                log.info("replica=%s event=heartbeat_refused term=%d reason=leader_key_not_this_term", self.replica, term.revision)
                return
            await asyncio.sleep(max(0.0, sent + interval - loop.time()))

    async def _suspect(self, leader: rtypes.Get, heard: rtypes.Get | None, from_revision: int) -> None:
        """Revoke the lease of `leader` (the leader key as read at `from_revision` - 1) once no
        heartbeat bound to it has come for `suspect` s while etcd answered this replica.
        `heard`: the heartbeat key as read then (None: absent; bound to another lease: not this
        leader's, which is then not suspected until one of its own comes)."""
        loop = asyncio.get_running_loop()
        last_revision = heard.mod_revision if heard is not None and heard.lease == leader.lease else 0
        heard_at = loop.time()
        # etcd's raft term as of the last look: a raft election in between stalled the
        # heartbeats too (for 0.6 to over 1 s), so the silence is counted again from there
        raft_term = leader.header.raft_term
        beaten = asyncio.Event()

        async def listen() -> None:
            nonlocal last_revision, heard_at
            start = from_revision
            while True:
                try:
                    watch = await self._watch(self.heartbeat_key, start)
                    try:
                        async for event in watch:
                            start = event.kv.mod_revision + 1
                            if event.kind == rtypes.EventKind.PUT and event.kv.lease == leader.lease:
                                last_revision, heard_at = event.kv.mod_revision, loop.time()
                                beaten.set()
                    finally:
                        with contextlib.suppress(Exception):
                            await watch.cancel()
                except Exception as e:
                    # the read-back below still tells a live leader from a dead one
                    reraise_cancel()
                    log.info("replica=%s event=heartbeat_watch_retry error=%s", self.replica, e)
                    await asyncio.sleep(self.suspect / 5)

        listener = asyncio.create_task(listen(), name=f"heartbeat-watch-{self.replica}")
        tx = self.client.transactions
        try:
            while True:
                if not last_revision:  # no heartbeat of this leader yet: nothing to miss
                    beaten.clear()
                    await beaten.wait()
                    continue
                remaining = max(heard_at, self._trouble_at) + self.suspect - loop.time()
                if remaining > 0:
                    beaten.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(remaining):
                            await beaten.wait()
                    continue
                try:
                    async with asyncio.timeout(self.suspect / 2):
                        _, now = await self.client.transaction(
                            compare=[], success=[tx.get(self.leader_key), tx.get(self.heartbeat_key)], failure=[])
                except (TimeoutError, aetcd.ClientError) as e:
                    reraise_cancel()
                    log.info("replica=%s event=suspect_check_failed error=%s", self.replica, str(e) or type(e).__name__)
                    self._trouble_at = loop.time()
                    continue
                held = now[0][0][1] if now[0] else None
                if held is None or held.create_revision != leader.create_revision:
                    return  # gone or replaced: the campaign's watch hears of it
                if held.header.raft_term != raft_term:
                    log.info("replica=%s event=suspect_deferred reason=etcd_raft_election raft_term=%d", self.replica,
                             held.header.raft_term)
                    raft_term, self._trouble_at = held.header.raft_term, loop.time()
                    continue
                beat = now[1][0][1] if now[1] else None
                if beat is not None and beat.lease == leader.lease and beat.mod_revision != last_revision:
                    last_revision, heard_at = beat.mod_revision, loop.time()  # we were the late ones
                    continue
                silent_ms = (loop.time() - heard_at) * 1000
                log.warning("replica=%s event=leader_suspect leader=%s term=%d silent_ms=%.0f revoked_lease=%x", self.replica,
                            (self.leader or {}).get("replica", ""), leader.create_revision, silent_ms, leader.lease)
                self.leaders_suspected += 1
                try:
                    # cancelled on the way when etcd's delete of the leader key arrives first
                    async with asyncio.timeout(self.suspect):
                        await self.client.revoke_lease(leader.lease)
                except (TimeoutError, aetcd.ClientError) as e:
                    # another follower was first (lease not found), or etcd is away: the campaign
                    # still takes over when the key goes, by revocation or expiry
                    reraise_cancel()
                    log.info("replica=%s event=leader_revoke_failed lease=%x error=%s", self.replica, leader.lease, str(e) or type(e).__name__)
                return
        finally:
            await cancel_and_wait(listener)

    async def _wait_deleted(self, key: bytes, from_revision: int, watching: asyncio.Event | None = None,
                            timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            watch = await self._watch(key, from_revision)
            if watching is not None:
                watching.set()
            try:
                async for event in watch:
                    if event.kind == rtypes.EventKind.DELETE:
                        return
            finally:
                if watching is not None:
                    watching.clear()
                await watch.cancel()
        raise ConnectionError(f"watch of {key.decode()} ended")

    async def _watch(self, key: bytes, from_revision: int) -> Any:
        """aetcd's watch of `key`, its creation shielded from our cancel. aetcd creates one watch
        at a time and hands etcd's next "created" answer to whichever creation is pending: one
        cancelled on the way leaves its answer to the next (seen: a follower's store watch got
        the heartbeat key's, and its cache stopped), and 3.11's wait_for inside can lose the
        cancel altogether. A creation cancelled here runs to its end and is cancelled then."""
        create = asyncio.ensure_future(self.client.watch(key, start_revision=from_revision))
        try:
            watch = await asyncio.shield(create)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                # the creation's end, then the watch's: shielded too, the caller is going away
                await asyncio.shield(self._drop_watch(create))
            raise
        reraise_cancel()
        return watch

    @staticmethod
    async def _drop_watch(create: asyncio.Future[Any]) -> None:
        watch = await create
        await watch.cancel()

    def _set_term(self, term: Term | None, reason: str = "") -> None:
        if term == self.term:
            return
        old, self.term = self.term, term
        if term is not None:
            self.terms_won += 1
            log.info("replica=%s event=leading term=%d lease=%x", self.replica, term.revision, term.lease)
        else:
            self.terms_lost += 1
            log.warning("replica=%s event=following lost_term=%d reason=%s", self.replica, old.revision if old else 0, reason)
        self._changed.set()
        for callback in self.on_change:
            try:
                callback(term)
            except Exception:
                log.exception("replica=%s event=term_listener_failed", self.replica)

    def status(self) -> dict[str, Any]:
        """What `p4nsm cluster` shows of this replica."""
        return {"replica": self.replica, "leading": self.term is not None,
                "term": self.term.revision if self.term else None,
                "leader": (self.leader or {}).get("replica"), "terms_won": self.terms_won, "terms_lost": self.terms_lost}
