"""Who this process is and who its peers are: SPIFFE X.509 SVIDs and gRPC's own TLS.

The API, small on purpose (every other package uses only these names):

- `Svid`: a SPIFFE id, its certificate chain (leaf first), private key and trust bundle, with PEM
  accessors (`cert_chain_pem()`, `key_pem()`, `bundle_pem()`) (`svid.py`).
- `spiffe_id_of(cert)`: the SPIFFE id in a certificate's URI SAN; `verify_svid(chain_pem,
  bundle_pem)`: the SPIFFE id of a chain that the bundle's CA signed, or `IdentityError`.
- `load_svid(settings)`: the SVID the settings name: a SPIRE agent's Workload API socket
  (`spiffe_endpoint_socket`) when set, else the files `tls_cert_file`, `tls_key_file`,
  `tls_ca_file`; None when none is set (`sources.py`). `require_svid(settings, what)`: the same,
  or `IdentityError` naming the settings when neither an SVID nor `plaintext` is configured.
- `init_lab_certs(dir, ...)` and `issue(dir, name, spiffe_id, ...)`: a local CA and EC P-256
  SPIFFE certificates for a lab (`p4nsm certs init DIR`); `lab_settings(dir, name)` the settings
  that load one of them (`lab_ca.py`).
- `server_credentials(svid, require_client_auth)`, `channel_credentials(svid)`: grpc's TLS;
  `peer_spiffe_id(context)`, `peer_certificate_pem(context)`: the mTLS caller of a servicer
  context, "" / b"" over plaintext (`grpc_tls.py`).
- `https_context(svid)`: an `ssl.SSLContext` that serves HTTPS with the SVID (`https.py`).
"""

from controller.identity.grpc_tls import channel_credentials, peer_certificate_pem, peer_spiffe_id, server_credentials
from controller.identity.https import https_context
from controller.identity.lab_ca import LabCerts, init_lab_certs, issue, lab_settings
from controller.identity.sources import load_svid, require_svid
from controller.identity.svid import IdentityError, Svid, spiffe_id_of, verify_svid

__all__ = [
    "IdentityError",
    "LabCerts",
    "Svid",
    "channel_credentials",
    "https_context",
    "init_lab_certs",
    "issue",
    "lab_settings",
    "load_svid",
    "peer_certificate_pem",
    "peer_spiffe_id",
    "require_svid",
    "server_credentials",
    "spiffe_id_of",
    "verify_svid",
]
