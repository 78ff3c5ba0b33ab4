"""Every timeout, interval and size of the controller, with its default, in one place.

Each can be overridden by an environment variable `P4NSM_<NAME>` (upper case) or by the
`--set name=value` option of `p4nsm run`. The README's settings table is generated from here
(`p4nsm settings`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, IPvAnyNetwork, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseModel):
    # --- P4Runtime client ---
    election_id: int = Field(10, ge=1, description="Election id this controller asks for (primary wins by highest)")
    keepalive_interval: float = Field(0.05, description="Seconds between liveness RPCs to each switch")
    keepalive_timeout: float = Field(0.15, description="A switch from which nothing (liveness answer, packet-in) arrived for this many seconds is down")
    reconnect_backoff_min: float = Field(0.1, description="First reconnect delay after a switch is lost (s)")
    reconnect_backoff_max: float = Field(2.0, description="Largest reconnect delay (s)")
    rpc_timeout: float = Field(5.0, description="Deadline of Write, Read and pipeline RPCs (s)")
    write_batch_max: int = Field(1000, description="Most updates in one Write; larger requests are split in order")
    grpc_max_metadata_bytes: int = Field(
        8 * 1024 * 1024,
        description="Client limit on trailing metadata: BMv2 sends ~120 bytes of error detail per failed update",
    )
    # --- fabric ---
    label_min: int = Field(1024, description="Lowest MPLS label the controller allocates (below are reserved)")
    label_max: int = Field(0xFFFFF, description="Highest MPLS label")
    vlan_min: int = Field(2, description="Lowest host-link VLAN id allocated to connections")
    vlan_max: int = Field(4094, description="Highest host-link VLAN id")
    # --- heal ---
    fast_failover: bool = Field(True, description="Head-end protection groups with watch ports on targets that honour them (softswitch, BMv2)")
    switch_startup_grace: float = Field(2.0, gt=0, description="After a start, a switch not up (connected, primary, reconciled) within this many seconds is taken for down; until then the stored connections over it stay as they are (s)")
    anti_entropy_interval: float = Field(30.0, description="Seconds between read-backs of every ready switch that remove entities no connection owns and rewrite lost ones (a drift seen twice in a row); 0 turns it off")
    probe_interval: float = Field(0.01, ge=0, description="Seconds between link probes out of each fabric port; 0 turns probes off (links then follow gNMI port state only)")
    probe_misses: int = Field(3, description="A link is down when this many probes in a row are missing in either direction while both switches show life")
    probe_keepalive_proof_delay: float = Field(0.25, description="A switch whose packet path shows no life (no probe of its own arrives, none arrives through it) proves by keepalive only that long after the missing probes (s): a starved switch answers keepalives before its packets")
    probe_ingress_stamps: bool = Field(True, description="Judge missing probes by the peer switch's ingress time stamp (packet-in metadata ingress_ts) where the P4Info has it: a probe is missing once the peer has shown, by its own clock, that it ran past the moment the probe would have arrived; without it (or off), once it is older than its ends' packet paths recently took")
    probe_stamp_margin: float = Field(0.005, ge=0, description="With probe_ingress_stamps: how much later than the probe would have arrived the peer must have run on, beyond the link's measured lateness relative to its source's other links (s): what the kernel may hold a frame after stamping it (a deferred softirq on a loaded machine)")
    probe_startup_grace: float = Field(1.0, ge=0, description="A probe sent before this many seconds have passed since probes began to arrive from and through both ends of its link (after a start, or a switch's return) does not count as missing: start-up load (pipeline checks, reconcile reads, NSM clients coming back) meets an empty probe history; 0 turns the grace off (s)")
    probe_takeover_grace: float = Field(0.25, ge=0, description="With replicas: the probe_startup_grace of a replica that takes over as leader, for the switch sessions it starts with (a switch that returns later gets probe_startup_grace): its process and the switches are warm, and a link cut around the leader's death is judged this much after the takeover (s)")
    probe_recovery: int = Field(25, description="Healthy probe intervals (both directions) before a down link is used again")
    probe_recovery_max: int = Field(1000, description="Cap on the recovery requirement, which doubles each time a link flaps")
    gnmi_up_hold_down: float = Field(0.2, description="A link that is not probed comes back this long after gNMI reports both its ports UP (s); a DOWN meanwhile starts the wait again")
    flap_window: float = Field(2.0, description="A link that fails within this many seconds of recovering counts as flapping (s)")
    outlier_consecutive_failures: int = Field(5, description="An endpoint that fails this many forwarded Requests in a row is ejected (Istio's default)")
    outlier_base_ejection_time: float = Field(30.0, description="Ejection time (s), times the number of ejections so far (Istio's default)")
    outlier_max_ejection_percent: float = Field(10.0, description="Most endpoints of a service ejected at once (%); one may always be")
    # --- store ---
    store_path: Path = Field(REPO_ROOT / "run" / "p4nsm.sqlite", description="SQLite file of the desired state")
    store: str = Field("sqlite", pattern=r"^(sqlite|etcd://[^,\s]+(,[^,\s]+)*)$", description="Where the desired state lives: `sqlite` (the file store_path, one controller) or `etcd://host:port,host:port,...` (an etcd cluster shared by replicas; one leads, by an etcd lease)")
    store_fabric_id: str = Field("", pattern=r"^[A-Za-z0-9._-]*$", description="With etcd: the fabric's key prefix /p4nsm/<this>/ (empty: the topology's name); replicas of one fabric share it")
    store_replica_id: str = Field("", pattern=r"^[A-Za-z0-9._-]*$", description="With etcd: this replica's name, unique in its fabric (empty: <hostname>-<NSM port>); a second replica starting with a name in use is refused")
    store_lease_ttl: int = Field(1, ge=1, description="With etcd: TTL of the replica's lease (whole seconds, etcd's unit); a leader whose lease cannot be kept alive this long loses leadership. 1 s needs members with heartbeat-interval ≤ 100 ms and election-timeout ≤ 600 ms")
    store_leader_suspect: float = Field(0.5, ge=0, description="With etcd: a follower that hears no heartbeat of the leader (written every fifth of this) for this many seconds, while etcd answers it, revokes the leader's lease and takes over, instead of waiting the 1.0-1.5 s etcd takes to expire it; below store_lease_ttl; 0: off (s)")
    store_timeout: float = Field(2.0, gt=0, description="With etcd: longest wait of a write for its commit (durable()) and of one etcd call; past it the caller gets UNAVAILABLE and the write stays queued (s)")
    # --- pipeline ---
    p4info_path: Path = Field(REPO_ROOT / "p4" / "nsm_fabric.p4info.txtpb", description="P4Info of the fabric program")
    softswitch_config_path: Path = Field(REPO_ROOT / "p4" / "nsm_fabric.softswitch.json", description="Device config for softswitch targets")
    bmv2_json_path: Path = Field(REPO_ROOT / "build" / "nsm_fabric.json", description="BMv2 JSON written by p4c (make -C p4)")
    tofino_pipeline_dir: Path = Field(REPO_ROOT / "build" / "tofino", description="bf-p4c output dir (tofino.bin, context.json)")
    tofino_conf_path: Path | None = Field(None, description="bf-p4c's .conf for Tofino switches (it lists bfrt.json and each pipeline's context.json, binary and pipe scope); when set, it wins over tofino_pipeline_dir")
    dpdk_pipeline_dir: Path = Field(REPO_ROOT / "build" / "dpdk", description="p4c-dpdk output dir for dpdk switches (bf-rt.json, pipe/context.json, pipe/<program>.spec): make -C p4 dpdk")
    # --- operators ---
    metrics_address: str = Field("127.0.0.1:9464", description="Prometheus metrics at http://<this>/metrics (host:port; empty: off)")
    web_address: str = Field("127.0.0.1:8464", description="Live web view and its JSON API (host:port; empty: off)")
    # --- NSM ---
    nsm_address: str = Field("127.0.0.1:5001", description="NSM API address: host:port, tcp://host:port or unix:///path")
    nsm_name: str = Field("p4nsm", description="This hop's path segment name in NSM connections")
    nsm_spiffe_id: str = Field("spiffe://p4nsm/controller", description="`sub` of the tokens this hop issues without an SVID (with one, the SVID's id, which should equal it); the SDK's tokens name it as their `aud`")
    nsm_run_dir: Path = Field(REPO_ROOT / "run" / "nsm", description="SDK endpoints' unix sockets: <dir>/<host>/<name>.sock")
    nsm_max_message_bytes: int = Field(1024 * 1024, description="Largest NSM gRPC message accepted")
    nsm_host_workers: int = Field(4, description="Worker processes that make and remove the host side's kernel interfaces")
    # NSM timers (the SDK's also)
    nsm_token_lifetime: float = Field(600.0, description="Lifetime of the tokens this hop and the SDK issue (s); the server closes a connection its client has not refreshed by then")
    nsm_max_token_lifetime: float = Field(3600.0, description="Latest a caller's expiry may be, from now (s): a later `nsm-client-token-expires` or token `exp` is cut to it, so an unrefreshed connection is closed by then")
    nsm_registry_default_expiration: float = Field(60.0, description="Longest life of an endpoint or service registration without re-Register (s); a service lives on while an endpoint offers it")
    nsm_endpoint_timeout: float = Field(15.0, description="Deadline of a Request or Close forwarded to an endpoint, and of one SDK Request try (s)")
    nsm_retry_interval: float = Field(0.2, description="SDK: wait between failed Request, refresh or Register tries (s)")
    # NSM limits: beyond them a Request is refused (INVALID_ARGUMENT, or RESOURCE_EXHAUSTED when too many are in progress)
    nsm_max_requests_in_progress: int = Field(512, description="Requests served at once; more are refused with RESOURCE_EXHAUSTED")
    nsm_max_requests_per_client: int = Field(128, description="Requests of one caller identity (mTLS id, else its token's sub) served at once; more are refused with RESOURCE_EXHAUSTED")
    nsm_max_requests_per_endpoint: int = Field(128, description="Requests forwarded to one endpoint URL and not yet answered; more go to the next candidate, or are refused with RESOURCE_EXHAUSTED")
    nsm_max_name_length: int = Field(253, description="Longest name, id or label key accepted in NSM messages")
    nsm_max_value_length: int = Field(4096, description="Longest label or parameter value or token accepted")
    nsm_max_map_entries: int = Field(64, description="Most labels, parameters or metrics in one map")
    nsm_max_list_entries: int = Field(64, description="Most path segments, mechanisms, addresses or routes in one list")
    nsm_ownership_policy: Literal["owner", "any"] = Field("owner", description="Who may Close, refresh or reselect a connection, see it in MonitorConnections, and Register over or Unregister a registry name: `owner` (the identity that made it, and operators) or `any` (everyone, the NSM SDK's Any())")
    nsm_operator_ids: str = Field("", description="SPIFFE ids (comma-separated) that may see and act on every connection and registration")
    nsm_registry_max_entries: int = Field(1024, ge=1, description="Most registrations each registry (services, endpoints) holds; more are refused with RESOURCE_EXHAUSTED")
    nsm_registry_max_bytes: int = Field(16 * 1024, ge=1, description="Largest registration (serialized bytes) either registry accepts")
    # --- TLS and identity (controller/identity/): with a certificate, TLS is required ---
    tls_cert_file: Path | None = Field(None, description="This process's certificate chain (PEM, leaf first; its URI SAN is its SPIFFE id): with it the NSM server and the SDK speak mTLS only, and the metrics and web view HTTPS")
    tls_key_file: Path | None = Field(None, description="Private key of tls_cert_file (PEM)")
    tls_ca_file: Path | None = Field(None, description="Trust bundle (PEM CA certificates) peers' certificates must chain to")
    spiffe_endpoint_socket: str = Field("", description="A SPIRE agent's Workload API socket (unix:///path or a path): the SVID and bundle come from it instead of the tls_*_file settings")
    plaintext: bool = Field(False, description="Run the NSM server and SDK without TLS when no certificate is configured (an explicit opt-out: without it and without certificates they refuse to start)")
    nsm_tls_server_name: str = Field("", description="Name an NSM TLS client checks in the server's certificate (DNS SAN) instead of the dialled host; unix sockets dial as `localhost`")
    # NSM host side: what an endpoint's answer may install in the hosts' namespaces
    nsm_service_prefixes: dict[str, list[IPvAnyNetwork]] = Field(
        {"*": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"]}, validate_default=True,
        description="Per network service (\"*\": any other), the prefixes an endpoint's IP context (addresses, routes, next hops) must lie inside; JSON in the environment",
    )

    @model_validator(mode="after")
    def _suspect_below_ttl(self) -> Settings:
        # past the TTL etcd has expired the lease already: the suspicion would never come first
        if self.store_leader_suspect >= self.store_lease_ttl:
            raise ValueError(f"store_leader_suspect ({self.store_leader_suspect:g} s) must be below store_lease_ttl "
                             f"({self.store_lease_ttl} s)")
        return self

    @field_validator("nsm_service_prefixes", mode="before")
    @classmethod
    def _json_prefixes(cls, value: object) -> object:
        return json.loads(value) if isinstance(value, str) else value

    @classmethod
    def load(cls, overrides: dict[str, str] | None = None) -> Settings:
        values: dict[str, object] = {}
        for name in cls.model_fields:
            env = os.environ.get(f"P4NSM_{name.upper()}")
            if env is not None:
                values[name] = env
        values.update(overrides or {})
        return cls.model_validate(values)
