"""An endpoint's registration, kept alive the SDK's way (docs/nsm_contract.md §9.6): re-Register at 2/3 of the
time left before expiration_time, with expiration_time cleared so the registry chooses again;
watch its own entry and register again as soon as the watch fails or reports it deleted."""

from __future__ import annotations

import asyncio
import logging

import grpc

from controller.nsm.base import clock
from controller.nsm.base.metadata import PATH_KEY, Credentials
from controller.nsm.base.tasks import Tasks
from controller.nsm.base.tokens import TokenSource
from controller.nsm.registry.path import RegistryPath
from controller.sdk.replicas import Replicas
from controller.sdk.retry import retry
from nsm_api import registry_pb2, registry_pb2_grpc

log = logging.getLogger("p4nsm.sdk")

REFRESH_AT = 2 / 3


class Registration:
    def __init__(self, replicas: Replicas, nse: registry_pb2.NetworkServiceEndpoint, payload: str,
                 tokens: TokenSource, retry_interval: float, call_timeout: float) -> None:
        self.nse = nse
        self.payload = payload
        self.tokens = tokens
        self.retry_interval = retry_interval
        self.call_timeout = call_timeout
        self.replicas = replicas
        self.registered: registry_pb2.NetworkServiceEndpoint | None = None
        self.tasks = Tasks(f"registration:{nse.name}")
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    @property
    def services(self) -> registry_pb2_grpc.NetworkServiceRegistryStub:
        return registry_pb2_grpc.NetworkServiceRegistryStub(self.replicas.channel)

    @property
    def endpoints(self) -> registry_pb2_grpc.NetworkServiceEndpointRegistryStub:
        return registry_pb2_grpc.NetworkServiceEndpointRegistryStub(self.replicas.channel)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        token, expires = self.tokens.issue()
        return (*Credentials(token, expires).as_metadata(), (PATH_KEY, RegistryPath(0, []).to_json()))

    async def _ensure_services(self) -> None:
        for name in self.nse.network_service_names:
            query = registry_pb2.NetworkServiceQuery(network_service=registry_pb2.NetworkService(name=name))
            found = [r async for r in self.services.Find(query, timeout=self.call_timeout, metadata=self._metadata())]
            if not found:  # someone else's registration (e.g. with matches) is left as it is
                await self.services.Register(registry_pb2.NetworkService(name=name, payload=self.payload),
                                             timeout=self.call_timeout, metadata=self._metadata())
            elif found[0].network_service.payload != self.payload:
                log.warning("endpoint=%s service=%s event=payload_differs registered=%s own=%s",
                            self.nse.name, name, found[0].network_service.payload, self.payload)

    async def register(self, give_up_after: float | None = None) -> registry_pb2.NetworkServiceEndpoint:
        async def once() -> registry_pb2.NetworkServiceEndpoint:
            try:
                await self._ensure_services()
                request = registry_pb2.NetworkServiceEndpoint()
                request.CopyFrom(self.nse)
                request.ClearField("expiration_time")
                return await self.endpoints.Register(request, timeout=self.call_timeout, metadata=self._metadata())
            except grpc.aio.AioRpcError as e:
                self.replicas.failed(e)  # the next try goes to the next replica
                raise

        async with self._lock:
            self.registered = await retry(f"register {self.nse.name}", once, self.retry_interval, give_up_after)
        expires_in = clock.to_seconds(self.registered.expiration_time) - clock.now()
        log.info("endpoint=%s event=registered expires_in=%.1fs", self.nse.name, expires_in)
        self._wake.set()
        return self.registered

    async def start(self, give_up_after: float | None = None) -> None:
        await self.register(give_up_after)
        self.tasks.spawn(self._refresh_loop(), "refresh")
        self.tasks.spawn(self._heal_loop(), "heal")

    async def _refresh_loop(self) -> None:
        while True:
            assert self.registered is not None
            left = clock.to_seconds(self.registered.expiration_time) - clock.now()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(left * REFRESH_AT, 0.0))
                continue  # registered meanwhile (heal): count from that registration
            except TimeoutError:
                pass
            await self.register()

    async def _heal_loop(self) -> None:
        query = registry_pb2.NetworkServiceEndpointQuery(
            network_service_endpoint=registry_pb2.NetworkServiceEndpoint(name=self.nse.name), watch=True)
        while True:
            reason = "watch ended"
            try:
                async for event in self.endpoints.Find(query, metadata=self._metadata()):
                    if event.deleted and event.network_service_endpoint.name == self.nse.name:
                        reason = "registration deleted"
                        break
            except grpc.aio.AioRpcError as e:
                reason = f"watch failed: {e.code().name}"
                self.replicas.failed(e)
            log.info("endpoint=%s event=heal reason=%s", self.nse.name, reason)
            await asyncio.sleep(self.retry_interval)
            await self.register()

    async def stop(self) -> None:
        await self.tasks.stop()
        try:
            await self.endpoints.Unregister(self.nse, timeout=self.call_timeout, metadata=self._metadata())
        except grpc.aio.AioRpcError as e:
            log.warning("endpoint=%s event=unregister_failed code=%s", self.nse.name, e.code().name)
