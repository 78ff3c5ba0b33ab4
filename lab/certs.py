"""TLS on by default in the lab and the demo: certificates made by `init_lab_certs` (what
`p4nsm certs init` makes) in the run directory, unless the settings bring their own (files, a
SPIRE socket) or say `plaintext`.

`lab_certs(run_dir, topo)` is idempotent (the CA and certificates already there are kept), so
the switches' side of the lab may call it on the same directory and share the CA."""

from __future__ import annotations

from pathlib import Path

from controller.identity import LabCerts, init_lab_certs, lab_settings
from controller.settings import Settings
from controller.topology import Topology

TLS_SETTINGS = ("tls_cert_file", "tls_key_file", "tls_ca_file", "spiffe_endpoint_socket", "plaintext")


def lab_certs(run_dir: Path, topo: Topology) -> LabCerts:
    return init_lab_certs(run_dir / "certs", switches=[s.name for s in topo.switches])


def as_role(settings: Settings, certs: LabCerts | None, role: str) -> Settings:
    """`settings` as the lab's `role` (controller, nsc, nse, operator) has them."""
    if certs is None:
        return settings
    return settings.model_copy(update={k: Path(v) for k, v in lab_settings(certs.dir, role).items()})


def lab_tls(settings: Settings, run_dir: Path, topo: Topology) -> LabCerts | None:
    """The lab's certificates, or None when the settings chose TLS material or plaintext."""
    if any(name in settings.model_fields_set for name in TLS_SETTINGS):
        return None
    return lab_certs(run_dir, topo)
