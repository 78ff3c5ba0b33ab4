"""The NSM API of the controller on one gRPC server: NetworkService and MonitorConnection (the
chain below), both registries, and grpc.health.v1 with each of them SERVING (docs/nsm_contract.md §1).

Stopping the server leaves the fabric as it is: connections keep forwarding, and a client's
next refresh re-adopts its connection by id (Fabric.connect is idempotent per id)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import grpc

from controller.fabric.connections import Fabric
from controller.identity import Svid, require_svid
from controller.nsm.base.access import Access
from controller.nsm.base.channels import Channels
from controller.nsm.base.checks import Limits
from controller.nsm.base.decoding import RefuseUndecodable
from controller.nsm.base.serving import bind, grpc_options, serve_health
from controller.nsm.base.tasks import Tasks
from controller.nsm.base.tokens import Signer, TokenSource, Verifier
from controller.nsm.elements.admission import Admission, ClientAdmission
from controller.nsm.elements.adopt import Adopt
from controller.nsm.elements.authorize import Authorize, Policy, path_tokens
from controller.nsm.elements.begin import Begin
from controller.nsm.elements.chain import Chain, Element
from controller.nsm.elements.client_mechanism import ClientMechanism
from controller.nsm.elements.endpoint_watch import EndpointWatch
from controller.nsm.elements.fabric_connect import FabricConnect, stored_owner
from controller.nsm.elements.forward import Forward
from controller.nsm.elements.host_pool import HostPool
from controller.nsm.elements.hostside import HostSide
from controller.nsm.elements.ipcontext import IpContextCheck
from controller.nsm.elements.monitor import Monitor, MonitorHub, MonitorServicer
from controller.nsm.elements.outcome import CallObserver, Outcome
from controller.nsm.elements.ownership import Ownership
from controller.nsm.elements.select.discover import Discover
from controller.nsm.elements.select.outlier import OutlierDetector
from controller.nsm.elements.select.roundrobin import Ejected, Report, RoundRobin
from controller.nsm.elements.timeout import Timeout
from controller.nsm.elements.updatepath import UpdatePath
from controller.nsm.elements.updatetoken import UpdateToken
from controller.nsm.elements.validate import Validate
from controller.nsm.orphans import OrphanReaper
from controller.nsm.registry.memory import Bounds
from controller.nsm.registry.ns_registry import NsRegistry
from controller.nsm.registry.nse_registry import NseRegistry
from controller.nsm.registry.stored import Records
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
        policy: Policy | None = None,
        ejected: Ejected | None = None,
        report: Report | None = None,
        svid: Svid | None = None,
        store: Records | None = None,
    ) -> None:
        """`dataplane` replaces the fabric and host-side elements (tests that must not touch
        switches); `ejected`/`report` are the outlier-ejection hook of endpoint selection.
        The settings' SVID also signs this hop's tokens, and its trust bundle checks the callers'
        (authorize.path_tokens unless `policy` replaces it). With `store`, the registries keep
        their registrations in its records and start() loads them back before serving."""
        self.settings = settings
        # mTLS with this SVID (`svid`, else the settings') on the server and on every channel it
        # dials; None only when the settings say plaintext (IdentityError otherwise: no silent
        # fallback to plaintext).
        self.svid = svid or require_svid(settings, "NSM server")
        # Istio-style outlier ejection of endpoints unless the caller brings its own hook.
        self.outliers = OutlierDetector(settings.outlier_consecutive_failures, settings.outlier_base_ejection_time,
                                        settings.outlier_max_ejection_percent)
        ejected = ejected or self.outliers.ejected
        report = report or self.outliers.report
        self.tasks = Tasks("nsm")
        self.tokens = TokenSource.of(settings.nsm_spiffe_id, settings.nsm_token_lifetime, Signer.of(self.svid))
        if self.tokens.subject != settings.nsm_spiffe_id:
            log.warning("event=spiffe_id_mismatch svid=%s nsm_spiffe_id=%s reason=%s", self.tokens.subject,
                        settings.nsm_spiffe_id, "SDK tokens name nsm_spiffe_id as their aud; the chain check wants the SVID's")
        policy = policy or path_tokens(Verifier.of(self.svid))
        limits = Limits.of(settings)
        self.access = Access.of(settings)
        bounds = Bounds(settings.nsm_registry_default_expiration, settings.nsm_registry_max_entries,
                        settings.nsm_registry_max_bytes)
        self.services = NsRegistry(self.tokens, limits, self.tasks, bounds, self.access,
                                   in_use=lambda name: bool(self.endpoints.offering(name)), records=store)
        self.endpoints = NseRegistry(self.tokens, limits, self.tasks, bounds, self.access, records=store)
        self.hub = MonitorHub(settings.nsm_name)
        self.channels = Channels(grpc_options(settings), self.svid, settings.nsm_tls_server_name)
        self.begin = Begin()
        hosts = fabric.hosts.keys()
        self.reaper: OrphanReaper | None = None
        self.host_pool = HostPool(settings.nsm_host_workers)
        if dataplane is None:
            dataplane = [FabricConnect(fabric, self.hub), HostSide(self.host_pool)]
            self.reaper = OrphanReaper(fabric, self.begin, self.tasks, self.host_pool, settings.nsm_token_lifetime, store)
        # (call, code, seconds) of every Request and Close, as the caller sees it (metrics)
        self.call_listeners: list[CallObserver] = []
        self.chain = Chain([
            Outcome(self._call_done),
            Admission(settings.nsm_max_requests_in_progress),
            Validate(limits),
            UpdatePath(settings.nsm_name),
            self.begin,
            UpdateToken(self.tokens, settings.nsm_max_token_lifetime),
            Authorize(policy),
            Ownership(self.access, functools.partial(stored_owner, fabric)),
            Adopt(fabric, self.host_pool),
            ClientAdmission(settings.nsm_max_requests_per_client),
            Timeout(self.tasks, store),
            Monitor(self.hub),
            ClientMechanism(hosts),
            Discover(self.services, self.endpoints),
            RoundRobin(ejected, report),
            Forward(self.channels, hosts, EndpointWatch(settings.nsm_name, self.channels, self.tokens, self.hub, self.tasks),
                    settings.nsm_endpoint_timeout, self.tokens, settings.nsm_max_requests_per_endpoint),
            IpContextCheck(settings.nsm_service_prefixes),
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
        # The registries as the store has them before any call is served: endpoints first, so
        # that a service's expiry finds the endpoints that keep it alive.
        self.endpoints.load()
        self.services.load()
        server = grpc.aio.server(options=grpc_options(self.settings), interceptors=[RefuseUndecodable()])
        networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(self.network_service, server)
        connection_pb2_grpc.add_MonitorConnectionServicer_to_server(MonitorServicer(self.hub, self.access), server)
        registry_pb2_grpc.add_NetworkServiceRegistryServicer_to_server(self.services, server)
        registry_pb2_grpc.add_NetworkServiceEndpointRegistryServicer_to_server(self.endpoints, server)
        await serve_health(server, SERVICE_NAMES)
        self.address = bind(server, address or self.settings.nsm_address, self.svid)
        await server.start()
        self._server = server
        if self.reaper is not None:
            self.reaper.start()
            self.tasks.spawn(self.host_pool.warm(), "host-pool-warm")
        log.info("event=nsm_listening address=%s name=%s tls=%s identity=%s", self.address, self.settings.nsm_name,
                 "mtls" if self.svid else "plaintext", self.svid.spiffe_id if self.svid else "")
        return self.address

    async def stop(self, grace: float = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        await self.network_service.wait_idle(grace + self.settings.nsm_endpoint_timeout)
        await self.tasks.stop()
        await self.channels.close()
        self.host_pool.close()
