"""The lab and the demo run over TLS by default (lab/certs.py): certificates of a lab CA in the
run directory, one per role and switch, unless the settings chose TLS material or plaintext."""

from __future__ import annotations

from pathlib import Path

from controller.identity import load_svid
from controller.settings import REPO_ROOT, Settings
from controller.topology import load_topology
from lab.certs import as_role, lab_tls

DIAMOND = REPO_ROOT / "topologies" / "diamond.yaml"


def test_lab_makes_certificates_per_role_and_switch(tmp_path: Path) -> None:
    topo = load_topology(DIAMOND)
    certs = lab_tls(Settings(), tmp_path, topo)
    assert certs is not None and certs.dir == tmp_path / "certs"
    for role, spiffe_id in (("controller", "spiffe://p4nsm/controller"), ("nse", "spiffe://p4nsm/nse"),
                            ("nsc", "spiffe://p4nsm/nsc"), ("s1", "spiffe://p4nsm/switch/s1")):
        svid = load_svid(as_role(Settings(), certs, role))
        assert svid is not None and svid.spiffe_id == spiffe_id
    # called again (the switches' side of the lab, say): the same CA, the same certificates
    before = {p.name: p.read_bytes() for p in certs.dir.iterdir()}
    lab_tls(Settings(), tmp_path, topo)
    assert {p.name: p.read_bytes() for p in certs.dir.iterdir()} == before


def test_settings_that_chose_keep_their_choice(tmp_path: Path) -> None:
    topo = load_topology(DIAMOND)
    assert lab_tls(Settings(plaintext=True), tmp_path, topo) is None
    assert lab_tls(Settings(spiffe_endpoint_socket="/run/spire/agent.sock"), tmp_path, topo) is None
    assert not (tmp_path / "certs").exists()
    assert as_role(Settings(plaintext=True), None, "controller") == Settings(plaintext=True)
