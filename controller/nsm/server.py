"""The NSM API of the controller on one gRPC server: NetworkService and MonitorConnection (the
chain below), both registries, and grpc.health.v1 with each of them SERVING (contract §1).

Stopping the server leaves the fabric as it is: connections keep forwarding, and a client's
next refresh re-adopts its connection by id (Fabric.connect is idempotent per id)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from nsm_api import connection_pb2_grpc, networkservice_pb2_grpc, registry_pb2_grpc

from controller.fabric.service import Fabric
from controller.heal.outlier import OutlierDetector
from controller.nsm.admission import Admission
from controller.nsm.authorize import Authorize, Policy, allow_any
from controller.nsm.begin import Begin
from controller.nsm.chain import Chain, Element
from controller.nsm.channels import Channels, dial_target
from controller.nsm.client_mechanism import ClientMechanism
from controller.nsm.discover import Discover
from controller.nsm.endpoint_watch import EndpointWatch
from controller.nsm.fabric_connect import FabricConnect
from controller.nsm.forward import Forward
from controller.nsm.host_pool import HostPool
from controller.nsm.hostside import HostSide
from controller.nsm.monitor import Monitor, MonitorHub, MonitorServicer
from controller.nsm.orphans import OrphanReaper
from controller.nsm.roundrobin import Ejected, Report, RoundRobin
from controller.nsm.service import NetworkServiceServicer
from controller.nsm.tasks import Tasks
from controller.nsm.timeout import Timeout
from controller.nsm.tokens import TokenSource
from controller.nsm.updatepath import UpdatePath
from controller.nsm.updatetoken import UpdateToken
from controller.nsm.validate import Limits, Validate
from controller.registry.ns_registry import NsRegistry
from controller.registry.nse_registry import NseRegistry
from controller.settings import Settings

log = logging.getLogger("p4nsm.nsm")

SERVICE_NAMES = (
    "networkservice.NetworkService",
    "connection.MonitorConnection",
    "registry.NetworkServiceRegistry",
    "registry.NetworkServiceEndpointRegistry",
)


def limits_of(settings: Settings) -> Limits:
    return Limits(settings.nsm_max_name_length, settings.nsm_max_value_length,
                  settings.nsm_max_map_entries, settings.nsm_max_list_entries)


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", settings.nsm_max_message_bytes)]


async def serve_health(server: grpc.aio.Server, names: Sequence[str]) -> HealthServicer:
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for name in ("", *names):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return health


def bind(server: grpc.aio.Server, url: str) -> str:
    """Listen on an NSM URL (tcp://host:port, host:port or unix:///path); the URL peers dial."""
    target = dial_target(url)
    if target.startswith("unix:"):
        path = Path(target.removeprefix("unix://") if target.startswith("unix://") else target.removeprefix("unix:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a socket left by an earlier run
    port = server.add_insecure_port(target)
    if port == 0:
        raise OSError(f"cannot listen on {url}")
    if target.startswith("unix:"):
        return target
    return f"tcp://{target.rsplit(':', 1)[0]}:{port}"


class NsmServer:
    def __init__(
        self,
        fabric: Fabric,
        settings: Settings,
        *,
        dataplane: Sequence[Element] | None = None,
        policy: Policy = allow_any,
        ejected: Ejected | None = None,
        report: Report | None = None,
    ) -> None:
        """`dataplane` replaces the fabric and host-side elements (tests that must not touch
        switches); `ejected`/`report` are the outlier-ejection hook of endpoint selection."""
        self.settings = settings
        # Istio-style outlier ejection of endpoints unless the caller brings its own hook.
        self.outliers = OutlierDetector(settings.outlier_consecutive_failures, settings.outlier_base_ejection_time,
                                        settings.outlier_max_ejection_percent)
        ejected = ejected or self.outliers.ejected
        report = report or self.outliers.report
        self.tasks = Tasks("nsm")
        self.tokens = TokenSource(settings.nsm_spiffe_id, settings.nsm_token_lifetime)
        limits = limits_of(settings)
        self.services = NsRegistry(self.tokens, limits)
        self.endpoints = NseRegistry(self.tokens, limits, settings.nsm_registry_default_expiration, self.tasks)
        self.hub = MonitorHub(settings.nsm_name)
        self.channels = Channels(grpc_options(settings))
        self.begin = Begin()
        hosts = fabric.hosts.keys()
        self.reaper: OrphanReaper | None = None
        self.host_pool = HostPool(settings.nsm_host_workers)
        if dataplane is None:
            dataplane = [FabricConnect(fabric, self.hub), HostSide(self.host_pool)]
            self.reaper = OrphanReaper(fabric, self.begin, self.tasks, self.host_pool, settings.nsm_token_lifetime)
        self.chain = Chain([
            Admission(settings.nsm_max_requests_in_progress),
            Validate(limits),
            UpdatePath(settings.nsm_name),
            self.begin,
            UpdateToken(self.tokens),
            Authorize(policy),
            Timeout(self.tasks),
            Monitor(self.hub),
            ClientMechanism(hosts),
            Discover(self.services, self.endpoints),
            RoundRobin(ejected, report),
            Forward(self.channels, hosts, EndpointWatch(settings.nsm_name, self.channels, self.tokens, self.hub, self.tasks),
                    settings.nsm_endpoint_timeout),
            *dataplane,
        ])
        self.network_service = NetworkServiceServicer(self.chain)
        self.address = ""
        self._server: grpc.aio.Server | None = None

    async def start(self, address: str | None = None) -> str:
        """Serve on `address` (default: the nsm_address setting); returns the bound address."""
        server = grpc.aio.server(options=grpc_options(self.settings))
        networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(self.network_service, server)
        connection_pb2_grpc.add_MonitorConnectionServicer_to_server(MonitorServicer(self.hub), server)
        registry_pb2_grpc.add_NetworkServiceRegistryServicer_to_server(self.services, server)
        registry_pb2_grpc.add_NetworkServiceEndpointRegistryServicer_to_server(self.endpoints, server)
        await serve_health(server, SERVICE_NAMES)
        self.address = bind(server, address or self.settings.nsm_address)
        await server.start()
        self._server = server
        if self.reaper is not None:
            self.reaper.start()
            self.tasks.spawn(self.host_pool.warm(), "host-pool-warm")
        log.info("event=nsm_listening address=%s name=%s", self.address, self.settings.nsm_name)
        return self.address

    async def stop(self, grace: float = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        await self.network_service.wait_idle(grace + self.settings.nsm_endpoint_timeout)
        await self.tasks.stop()
        await self.channels.close()
        self.host_pool.close()
