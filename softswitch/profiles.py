"""Target profiles: the softswitch behaving as Stratum or infrap4d do over P4Runtime, so that CI
runs the controller's code paths for those targets without their hardware.

`softswitch` (the default) is the softswitch's own behaviour. `stratum` and `infrap4d` follow
what their sources say (Stratum's P4Service and its Tofino/TDI managers; IPDK's infrap4d):

- device id 0 and election id 0 are refused (INVALID_ARGUMENT), on the stream and in every RPC;
- RECONCILE_AND_COMMIT answers UNIMPLEMENTED;
- Stratum refuses group members with a watch port (INVALID_ARGUMENT "Watch ports are not
  supported."); infrap4d accepts them and does not honour them (the member stays selected when
  its port is down);
- infrap4d has no packet I/O on DPDK: a PacketOut is accepted and dropped, no PacketIn is sent;
  its ports are PNA's 32-bit PortId_t, so packet-out port metadata may be 32 bits wide;
- TLS: Stratum serves TLS when given a certificate and key; infrap4d always does unless
  started with --grpc-open-insecure-mode, and then requires a client certificate its CA signed
  (its default REQUIRE_CLIENT_CERT_AND_VERIFY; main.py enforces both).
"""

from __future__ import annotations

import dataclasses

from finsy.proto import p4r, rpc_code

from softswitch.p4info_index import P4RTError

WATCH_PORTS_REFUSED = "Watch ports are not supported."
INVALID_DEVICE_ID = "Invalid device ID."
INVALID_ELECTION_ID = "Invalid election ID."
PNA_PORT_BITS = 32


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    refuse_zero_ids: bool = False
    reconcile_supported: bool = True
    refuse_watch_ports: bool = False
    honour_watch_ports: bool = True
    packet_io: bool = True
    # Width a packet-out port field may have (None: the P4Info's own width).
    packet_port_bits: int | None = None
    # TLS unless --grpc-open-insecure-mode; False: TLS only when a certificate is given.
    tls_by_default: bool = False
    # Under TLS, a client certificate the CA signed is required (infrap4d's default
    # REQUIRE_CLIENT_CERT_AND_VERIFY); False: only with --grpc-server-with-client-auth.
    client_auth_by_default: bool = False

    @property
    def admits_every_update(self) -> bool:
        """admit_update passes every update through unchanged: the Write path may skip it."""
        return self.honour_watch_ports and not self.refuse_watch_ports

    def check_ids(self, device_id: int, election_id: int | None) -> None:
        """Raise P4RTError for the ids this target refuses; election_id None: not checked."""
        if not self.refuse_zero_ids:
            return
        if device_id == 0:
            raise P4RTError(rpc_code.INVALID_ARGUMENT, INVALID_DEVICE_ID)
        if election_id == 0:
            raise P4RTError(rpc_code.INVALID_ARGUMENT, INVALID_ELECTION_ID)

    def admit_update(self, update: p4r.Update) -> p4r.Update:
        """The update as this target takes it in; P4RTError for one it refuses."""
        if update.entity.WhichOneof("entity") != "action_profile_group":
            return update
        members = update.entity.action_profile_group.members
        if not any(m.WhichOneof("watch_kind") for m in members):
            return update
        if self.refuse_watch_ports:
            raise P4RTError(rpc_code.INVALID_ARGUMENT, WATCH_PORTS_REFUSED)
        if self.honour_watch_ports:
            return update
        # Accepted but not honoured: stored without the watch, so no member ever leaves the
        # selection when its port goes down.
        kept = p4r.Update()
        kept.CopyFrom(update)
        for member in kept.entity.action_profile_group.members:
            member.ClearField("watch_kind")
        return kept


SOFTSWITCH = Profile("softswitch")
STRATUM = Profile("stratum", refuse_zero_ids=True, reconcile_supported=False, refuse_watch_ports=True,
                  honour_watch_ports=False)
INFRAP4D = Profile("infrap4d", refuse_zero_ids=True, reconcile_supported=False, honour_watch_ports=False,
                   packet_io=False, packet_port_bits=PNA_PORT_BITS, tls_by_default=True, client_auth_by_default=True)
PROFILES = {p.name: p for p in (SOFTSWITCH, STRATUM, INFRAP4D)}
