"""An NSE: serves NetworkService and MonitorConnection on its own socket, registers itself with
the NSM registry, and answers each Request with a point-to-point pair of addresses from its
CIDR. Its host on the fabric is the label `p4nsm.io/host`; the controller creates the kernel
interfaces on both sides, so the endpoint itself touches no interface."""

from __future__ import annotations

import dataclasses
import logging
import uuid

import grpc

from controller.identity import require_svid
from controller.nsm.base.channels import dial
from controller.nsm.base.checks import Limits
from controller.nsm.base.decoding import RefuseUndecodable
from controller.nsm.base.serving import bind, grpc_options, serve_health
from controller.nsm.base.tasks import Tasks
from controller.nsm.base.tokens import Signer, TokenSource, Verifier
from controller.nsm.elements.authorize import Authorize, path_tokens
from controller.nsm.elements.begin import Begin
from controller.nsm.elements.chain import Chain
from controller.nsm.elements.monitor import Monitor, MonitorHub, MonitorServicer
from controller.nsm.elements.placement import HOST_LABEL
from controller.nsm.elements.timeout import Timeout
from controller.nsm.elements.trimpath import TrimPath
from controller.nsm.elements.updatepath import UpdatePath
from controller.nsm.elements.updatetoken import UpdateToken
from controller.nsm.elements.validate import PAYLOADS as ACCEPTED_PAYLOADS
from controller.nsm.elements.validate import Validate
from controller.nsm.registry.ns_registry import DEFAULT_PAYLOAD
from controller.nsm.service import NetworkServiceServicer
from controller.sdk.endpoint_mechanism import AcceptKernel
from controller.sdk.ipam import PairPool, PointToPointIpam
from controller.sdk.registration import Registration
from controller.sdk.replicas import Replicas
from controller.settings import Settings
from nsm_api import connection_pb2_grpc, networkservice_pb2_grpc, registry_pb2

log = logging.getLogger("p4nsm.sdk")


@dataclasses.dataclass(frozen=True)
class EndpointConfig:
    service: str
    host: str  # the fabric host (netns) the endpoint serves from
    cidr: str
    nsm_url: str  # the controller's NSM API: its registry
    name: str = ""  # default: <service>-<host>-<random>
    listen_url: str = ""  # default: unix://<nsm_run_dir>/<host>/<name>.sock
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    # The service's payload when this endpoint registers it (a service already registered keeps
    # its own): a client asking for another payload gets NOT_FOUND.
    payload: str = DEFAULT_PAYLOAD

    def __post_init__(self) -> None:
        named = [p for p in ACCEPTED_PAYLOADS if p]
        if self.payload not in named:
            raise ValueError(f"payload: {self.payload!r} is none of {', '.join(named)}")


class Endpoint:
    def __init__(self, config: EndpointConfig, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.name = config.name or f"{config.service}-{config.host}-{uuid.uuid4().hex[:6]}"
        self.listen_url = config.listen_url or f"unix://{settings.nsm_run_dir / config.host / self.name}.sock"
        # one SVID for both sides: the server the controller dials (mTLS) and the registry client;
        # it signs the endpoint's tokens and its trust bundle checks the controller's
        self.svid = require_svid(settings, "NSM endpoint")
        self.tokens = TokenSource.of(f"spiffe://p4nsm/nse/{self.name}", settings.nsm_token_lifetime, Signer.of(self.svid))
        self.tasks = Tasks(f"nse:{self.name}")
        self.hub = MonitorHub(self.name)
        self.pool = PairPool(config.cidr)
        self.begin = Begin()
        self.chain = Chain([
            Validate(Limits.of(settings)),
            UpdatePath(self.name),
            self.begin,
            UpdateToken(self.tokens, settings.nsm_max_token_lifetime),
            Authorize(path_tokens(Verifier.of(self.svid))),
            Timeout(self.tasks),
            Monitor(self.hub),
            TrimPath(),
            AcceptKernel(),
            PointToPointIpam(self.pool),
        ])
        self.url = ""
        self.registration: Registration | None = None
        self._server: grpc.aio.Server | None = None
        self._replicas: Replicas | None = None

    def registration_message(self) -> registry_pb2.NetworkServiceEndpoint:
        labels = {**self.config.labels, HOST_LABEL: self.config.host}
        return registry_pb2.NetworkServiceEndpoint(
            name=self.name, network_service_names=[self.config.service], url=self.url,
            network_service_labels={self.config.service: registry_pb2.NetworkServiceLabels(labels=labels)},
        )

    async def start(self, register_within: float | None = None) -> None:
        server = grpc.aio.server(options=grpc_options(self.settings), interceptors=[RefuseUndecodable()])
        networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(NetworkServiceServicer(self.chain), server)
        connection_pb2_grpc.add_MonitorConnectionServicer_to_server(MonitorServicer(self.hub), server)
        await serve_health(server, ("networkservice.NetworkService", "connection.MonitorConnection"))
        self.url = bind(server, self.listen_url, self.svid)
        await server.start()
        self._server = server
        log.info("endpoint=%s event=listening url=%s service=%s host=%s cidr=%s tls=%s", self.name, self.url,
                 self.config.service, self.config.host, self.config.cidr, "mtls" if self.svid else "plaintext")
        # nsm_url: one address, or every replica's comma-separated (registered with the leader)
        self._replicas = Replicas(self.config.nsm_url, lambda url: dial(url, self.svid, grpc_options(self.settings),
                                                                         self.settings.nsm_tls_server_name))
        self.registration = Registration(self._replicas, self.registration_message(), self.config.payload, self.tokens,
                                         self.settings.nsm_retry_interval, self.settings.nsm_endpoint_timeout)
        await self.registration.start(register_within)

    async def stop(self) -> None:
        """Unregister and stop serving; stopping twice is harmless."""
        registration, self.registration = self.registration, None
        server, self._server = self._server, None
        replicas, self._replicas = self._replicas, None
        if registration is not None:
            await registration.stop()
        if server is not None:
            await server.stop(0.5)
        await self.tasks.stop()
        if replicas is not None:
            await replicas.close()
