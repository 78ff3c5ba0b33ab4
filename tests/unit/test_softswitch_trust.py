"""The softswitch's trust rules (softswitch/trust.py) and the lab's TLS topology, without gRPC:
the conformance suite (test_softswitch_hardening.py) runs the same rules over real mTLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.topology import load_topology
from softswitch.trust import EVERY_ROLE, Grant, Trust, peer_identities

REPO = Path(__file__).resolve().parents[2]
CTL = "spiffe://p4nsm/controller"


def test_grants_parse_identity_and_role() -> None:
    assert Grant.parse(CTL) == Grant(CTL, EVERY_ROLE)
    assert Grant.parse(f"{CTL}@monitor") == Grant(CTL, "monitor")
    assert Grant.parse(f"{CTL}@") == Grant(CTL, "")  # the default role only
    with pytest.raises(ValueError, match="IDENTITY"):
        Grant.parse("@monitor")


def test_allow_list_by_identity_and_role() -> None:
    trust = Trust(client_auth=True, grants=[Grant(CTL, EVERY_ROLE), Grant("spiffe://p4nsm/mon", "monitor")])
    assert trust.allows((CTL,), "") and trust.allows((CTL,), "monitor")
    assert trust.allows(("spiffe://p4nsm/mon",), "monitor")
    assert not trust.allows(("spiffe://p4nsm/mon",), "")
    assert not trust.allows(("spiffe://p4nsm/intruder",), "")
    assert not trust.allows((), "")  # a client without a certificate identity
    assert trust.allows_any_role(("spiffe://p4nsm/mon",)) and not trust.allows_any_role(("spiffe://p4nsm/x",))


def test_without_an_allow_list_the_ca_is_the_trust_and_without_client_auth_everyone() -> None:
    ca_only = Trust(client_auth=True)
    assert ca_only.allows(("spiffe://p4nsm/anyone",), "any") and not ca_only.allows((), "")
    plaintext = Trust(client_auth=False)
    assert plaintext.allows((), "") and not plaintext.enforced
    with pytest.raises(ValueError, match="client certificates"):
        Trust(client_auth=False, grants=[Grant(CTL, EVERY_ROLE)])


def test_identities_are_the_uri_and_dns_sans_grpc_verified() -> None:
    auth = {"peer_uri": [CTL.encode()], "peer_dns": [b"localhost"], "x509_common_name": [b"ctl"]}
    assert peer_identities(auth) == (CTL, "localhost")
    assert peer_identities({}) == ()


def test_a_lab_topology_reaches_every_switch_with_its_ca_and_name() -> None:
    topo = load_topology(REPO / "topologies" / "diamond.yaml")
    secure = topo.with_tls(Path("/run/certs/ca.crt"))
    assert [(s.tls_ca, s.tls_server_name) for s in secure.switches] == [
        (Path("/run/certs/ca.crt"), s.name) for s in topo.switches]
    assert secure.switch("s1").tls_ca == Path("/run/certs/ca.crt")  # the index is rebuilt too
    assert secure.links == topo.links and secure.hosts == topo.hosts
