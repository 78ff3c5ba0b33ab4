"""An NSC: Request a network service for a netns, keep the connection refreshed (docs/nsm_contract.md §8.1)
and healed (§8.4): it watches its own connection on the server's MonitorConnections, and on
DOWN, DELETE or a broken stream requests again: with reselect (a new endpoint), or, when a
liveness check says the data plane still works, with the same path (after a controller restart,
the controller adopts the connection it holds); a serving controller that keeps refusing the same
path makes it reselect."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller.identity import require_svid
from controller.nsm.base import kernel
from controller.nsm.base.channels import dial
from controller.nsm.base.metadata import Credentials
from controller.nsm.base.tasks import Tasks
from controller.nsm.base.tokens import Signer, TokenSource
from controller.sdk.heal import own_state
from controller.sdk.refresh import refresh_delay
from controller.sdk.replicas import Replicas
from controller.sdk.retry import retry
from controller.settings import Settings
from nsm_api import connection_pb2, connection_pb2_grpc, networkservice_pb2, networkservice_pb2_grpc

log = logging.getLogger("p4nsm.sdk")

Liveness = Callable[[connection_pb2.Connection], Awaitable[bool]]
MY_INDEX = 0
# Plain Requests a serving controller refuses before the client gives up its path and reselects:
# after a restart the same path is adopted, unless its endpoint went away meanwhile.
REFUSALS_BEFORE_RESELECT = 2
HEALTH_TIMEOUT_S = 2.0
NETWORK_SERVICE = networkservice_pb2.DESCRIPTOR.services_by_name["NetworkService"].full_name


class Client:
    def __init__(self, nsm_url: str, settings: Settings, *, name: str = "", refresh: bool = True, heal: bool = True,
                 liveness: Liveness | None = None, token_lifetime: float | None = None) -> None:
        self.settings = settings
        self.name = name or f"client-{uuid.uuid4()}"
        self.id = str(uuid.uuid4())
        self.refresh, self.heal, self.liveness = refresh, heal, liveness
        # mTLS with the settings' SVID (its SPIFFE id is who the server takes this client for);
        # plaintext only with the plaintext setting
        self.svid = require_svid(settings, "NSM client")
        # signed with the SVID when there is one; unsigned tokens pass only a plaintext server
        self.tokens = TokenSource.of(f"spiffe://p4nsm/nsc/{self.name}", token_lifetime or settings.nsm_token_lifetime,
                                     Signer.of(self.svid))
        # The server closes at token expiry minus the Request's deadline (§7.2): a deadline of a
        # third of the lifetime at most keeps that point well after the next refresh.
        self.call_timeout = min(settings.nsm_endpoint_timeout, self.tokens.lifetime / 3)
        # nsm_url: one address, or every replica's comma-separated (the leader is found among them)
        self.replicas = Replicas(nsm_url, lambda url: dial(url, self.svid, server_name=settings.nsm_tls_server_name))
        self.tasks = Tasks(f"nsc:{self.name}")
        self.connection: connection_pb2.Connection | None = None
        self.history: list[str] = []  # "up", "refreshed", "down: <why>", "healed": what tests and the CLI show
        self._template = networkservice_pb2.NetworkServiceRequest()
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._healing = False
        self._closed = False

    @property
    def stub(self) -> networkservice_pb2_grpc.NetworkServiceStub:
        return networkservice_pb2_grpc.NetworkServiceStub(self.replicas.channel)

    @property
    def monitor_stub(self) -> connection_pb2_grpc.MonitorConnectionStub:
        return connection_pb2_grpc.MonitorConnectionStub(self.replicas.channel)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        # the token is for the controller (its aud, which the server's tokens_chained checks)
        return Credentials(*self.tokens.issue(self.settings.nsm_spiffe_id)).as_metadata()

    async def request(self, service: str, netns: str, *, iface: str = "", labels: dict[str, str] | None = None,
                      endpoint: str = "", give_up_after: float | None = None) -> connection_pb2.Connection:
        conn = connection_pb2.Connection(
            id=self.id, network_service=service, labels=labels or {}, network_service_endpoint_name=endpoint,
            path=connection_pb2.Path(index=MY_INDEX, path_segments=[connection_pb2.PathSegment(name=self.name, id=self.id)]))
        self._template = networkservice_pb2.NetworkServiceRequest(connection=conn,
                                                                  mechanism_preferences=[kernel.mechanism(netns, iface)])
        resp = await retry(f"request {service}", lambda: self._send(self._next()), self.settings.nsm_retry_interval, give_up_after)
        self.history.append("up")
        return resp

    def _next(self, reselect: bool = False) -> networkservice_pb2.NetworkServiceRequest:
        req = networkservice_pb2.NetworkServiceRequest()
        req.CopyFrom(self._template)
        if self.connection is not None:
            req.connection.CopyFrom(self.connection)
            req.connection.state = connection_pb2.UP
        if reselect:
            req.connection.ClearField("mechanism")
            req.connection.network_service_endpoint_name = ""
            req.connection.state = connection_pb2.RESELECT_REQUESTED
        return req

    async def _send(self, req: networkservice_pb2.NetworkServiceRequest) -> connection_pb2.Connection:
        async with self._lock:
            try:
                resp: connection_pb2.Connection = await self.stub.Request(
                    req, timeout=self.call_timeout, metadata=self._metadata())
            except grpc.aio.AioRpcError as e:
                self.replicas.failed(e)  # the next try goes to the next replica
                raise
            self.connection = resp
            if self.refresh:
                self.tasks.cancel(self._timer)
                self._timer = self.tasks.later(refresh_delay(resp), self._refresh, f"refresh:{self.id}")
            if self.heal:
                if self._monitor is not None:
                    self._monitor.cancel()
                self._monitor = self.tasks.spawn(self._watch(), f"monitor:{self.id}")
            return resp

    async def _refresh(self) -> None:
        if self._closed:
            return
        try:
            await self._send(self._next())
            self.history.append("refreshed")
        except grpc.aio.AioRpcError as e:
            log.info("connection=%s event=refresh_failed code=%s error=%s", self.id, e.code().name, e.details())
            self._timer = self.tasks.later(self.settings.nsm_retry_interval, self._refresh, f"refresh:{self.id}")

    async def _watch(self) -> None:
        selector = connection_pb2.MonitorScopeSelector(path_segments=[connection_pb2.PathSegment(id=self.id, name=self.name)])
        reason = "monitor stream ended"
        failover = False
        while True:
            try:
                async for event in self.monitor_stub.MonitorConnections(selector, metadata=self._metadata()):
                    states = own_state(event, MY_INDEX, self.id)
                    if connection_pb2.DOWN in states:
                        reason = f"{connection_pb2.ConnectionEventType.Name(event.type)} with state DOWN"
                        break
                    if failover and event.type == connection_pb2.INITIAL_STATE_TRANSFER:
                        failover = False
                        self.history.append("monitor resumed" if states else "monitor resumed without it")
                        log.info("connection=%s event=monitor_resumed url=%s known=%s", self.id, self.replicas.url, bool(states))
                        if not states and not self._closed:
                            # a new leader that has not seen it yet: the refresh, now, adopts it (same path)
                            self.tasks.cancel(self._timer)
                            self._timer = self.tasks.later(0, self._refresh, f"refresh:{self.id}")
                            return
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.CANCELLED:
                    return
                reason = f"monitor failed: {e.code().name}"
                if not self._closed and self.replicas.failed(e):
                    # several replicas: a stream broken by a replica's going is first a search for the
                    # leader, whose initial state says whether the connection needs anything at all
                    failover = True
                    await asyncio.sleep(self.settings.nsm_retry_interval / len(self.replicas.urls))
                    continue
            break
        if not self._closed and not self._healing:
            self.history.append(f"down: {reason}")
            log.warning("connection=%s event=down reason=%s", self.id, reason)
            self.tasks.spawn(self._heal(), f"heal:{self.id}")

    async def _heal(self) -> None:
        self._healing = True
        try:
            reselect = self.liveness is None or self.connection is None or not await self.liveness(self.connection)
            refusals = 0
            while not self._closed:
                try:
                    if reselect:
                        await self._close_quietly()
                    await self._send(self._next(reselect))
                    self.history.append("healed")
                    log.info("connection=%s event=healed reselect=%s endpoint=%s", self.id, reselect,
                             self.connection.network_service_endpoint_name if self.connection else "")
                    return
                except grpc.aio.AioRpcError as e:
                    log.info("connection=%s event=heal_failed code=%s error=%s", self.id, e.code().name, e.details())
                    # The controller is up and still refuses the same path: its endpoint is gone.
                    if not reselect and await self._serving():
                        refusals += 1
                        reselect = refusals >= REFUSALS_BEFORE_RESELECT
                    # Go retries with no pause; a pause keeps a dead server from being hammered.
                    await asyncio.sleep(self.settings.nsm_retry_interval)
        finally:
            self._healing = False

    async def _serving(self) -> bool:
        """Whether the controller answers that it serves NetworkService (grpc.health.v1)."""
        stub = health_pb2_grpc.HealthStub(self.replicas.channel)
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=NETWORK_SERVICE), timeout=HEALTH_TIMEOUT_S)
        except grpc.aio.AioRpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    async def _close_quietly(self) -> None:
        if self.connection is None:
            return
        try:
            await self.stub.Close(self.connection, timeout=self.call_timeout, metadata=self._metadata())
        except grpc.aio.AioRpcError as e:
            self.replicas.failed(e)
            log.info("connection=%s event=close_failed code=%s", self.id, e.code().name)

    async def close(self) -> None:
        """Close the connection and stop refreshing and healing it."""
        self._closed = True
        await self.tasks.stop()
        async with self._lock:
            if self.connection is not None:
                await retry("close", self._close_once, self.settings.nsm_retry_interval, self.settings.nsm_endpoint_timeout)
                self.history.append("closed")
        await self.replicas.close()

    async def _close_once(self) -> object:
        assert self.connection is not None
        try:
            return await self.stub.Close(self.connection, timeout=self.call_timeout, metadata=self._metadata())
        except grpc.aio.AioRpcError as e:
            self.replicas.failed(e)
            raise
