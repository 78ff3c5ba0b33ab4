"""TLS for the controller's HTTP servers (metrics, web view) with the same SVID as its gRPC.

Server authentication only: Prometheus and browsers are checked by nothing here (what they read
is read-only; bind them to loopback or a trusted network). A client verifies the server with
the trust bundle (`curl --cacert ca.crt`, Prometheus' `tls_config.ca_file`)."""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

from controller.identity.svid import Svid


def https_context(svid: Svid) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # ssl loads a certificate and key from files only: a private directory for the moment it
    # reads them (an SVID from the Workload API has no files of its own)
    with tempfile.TemporaryDirectory(prefix="p4nsm-tls-") as tmp:
        chain, key = Path(tmp) / "chain.pem", Path(tmp) / "key.pem"
        chain.write_bytes(svid.cert_chain_pem())
        key.touch(mode=0o600)
        key.write_bytes(svid.key_pem())
        context.load_cert_chain(chain, key)
    return context
