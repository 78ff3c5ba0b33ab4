"""The NSM API of the controller on one gRPC server: NetworkService and MonitorConnection (the
chain below), both registries, and grpc.health.v1 with each of them SERVING (docs/nsm_contract.md §1).

Stopping the server leaves the fabric as it is: connections keep forwarding, and a client's
next refresh re-adopts its connection by id (Fabric.connect is idempotent per id)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc

from controller.fabric.connections import Fabric
from controller.nsm.base.channels import Channels
from controller.nsm.base.checks import Limits
from controller.nsm.base.decoding import RefuseUndecodable
from controller.nsm.base.serving import bind, grpc_options, serve_health
from controller.nsm.base.tasks import Tasks
from controller.nsm.base.tokens import TokenSource
from controller.nsm.elements.admission import Admission, ClientAdmission
from controller.nsm.elements.authorize import Authorize, Policy, allow_any
from controller.nsm.elements.begin import Begin
from controller.nsm.elements.chain import Chain, Element
from controller.nsm.elements.client_mechanism import ClientMechanism
from controller.nsm.elements.endpoint_watch import EndpointWatch
from controller.nsm.elements.fabric_connect import FabricConnect
from controller.nsm.elements.forward import Forward
from controller.nsm.elements.host_pool import HostPool
from controller.nsm.elements.hostside import HostSide
from controller.nsm.elements.monitor import Monitor, MonitorHub, MonitorServicer
from controller.nsm.elements.outcome import CallObserver, Outcome
from controller.nsm.elements.select.discover import Discover
from controller.nsm.elements.select.outlier import OutlierDetector
from controller.nsm.elements.select.roundrobin import Ejected, Report, RoundRobin
from controller.nsm.elements.timeout import Timeout
from controller.nsm.elements.updatepath import UpdatePath
from controller.nsm.elements.updatetoken import UpdateToken
from controller.nsm.elements.validate import Validate
from controller.nsm.orphans import OrphanReaper
from controller.nsm.registry.ns_registry import NsRegistry
from controller.nsm.registry.nse_registry import NseRegistry
from controller.nsm.service import NetworkServiceServicer
from controller.settings import Settings
from nsm_api import connection_pb2_grpc, networkservice_pb2_grpc, registry_pb2_grpc

log = logging.getLogger("p4nsm.nsm")

SERVICE_NAMES = (
    "networkservice.NetworkService",
    "connection.MonitorConnection",
    "registry.NetworkServiceRegistry",
    "registry.NetworkServiceEndpointRegistry",
)


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
        limits = Limits.of(settings)
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
        # (call, code, seconds) of every Request and Close, as the caller sees it (metrics)
        self.call_listeners: list[CallObserver] = []
        self.chain = Chain([
            Outcome(self._call_done),
            Admission(settings.nsm_max_requests_in_progress),
            Validate(limits),
            UpdatePath(settings.nsm_name),
            self.begin,
            UpdateToken(self.tokens),
            Authorize(policy),
            ClientAdmission(settings.nsm_max_requests_per_client),
            Timeout(self.tasks),
            Monitor(self.hub),
            ClientMechanism(hosts),
            Discover(self.services, self.endpoints),
            RoundRobin(ejected, report),
            Forward(self.channels, hosts, EndpointWatch(settings.nsm_name, self.channels, self.tokens, self.hub, self.tasks),
                    settings.nsm_endpoint_timeout, settings.nsm_max_requests_per_endpoint),
            *dataplane,
        ])
        self.network_service = NetworkServiceServicer(self.chain)
        self.address = ""
        self._server: grpc.aio.Server | None = None

    def _call_done(self, call: str, code: grpc.StatusCode, seconds: float) -> None:
        for listener in self.call_listeners:
            listener(call, code, seconds)

    async def start(self, address: str | None = None) -> str:
        """Serve on `address` (default: the nsm_address setting); returns the bound address."""
        server = grpc.aio.server(options=grpc_options(self.settings), interceptors=[RefuseUndecodable()])
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
