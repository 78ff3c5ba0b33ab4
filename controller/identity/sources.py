"""Where this process's SVID comes from: a SPIRE agent's Workload API socket when one is
configured (the `spiffe` package), otherwise three PEM files (certificate chain, key, CA bundle).

The Workload API is read once, when a server or client starts: an SVID SPIRE rotates later
takes a restart to be picked up (SPIRE's default SVID lifetime is an hour; its agent renews at
half of it, so restart within that or use files)."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controller.identity.svid import IdentityError, Svid, spiffe_id_of
from controller.settings import Settings

WORKLOAD_API_TIMEOUT = 5.0  # s: a configured agent that does not answer by then is an error


def load_svid(settings: Settings) -> Svid | None:
    """The SVID the settings name, None when they name none (then only `plaintext` may run)."""
    if settings.spiffe_endpoint_socket:
        return _from_workload_api(settings.spiffe_endpoint_socket)
    files = {"tls_cert_file": settings.tls_cert_file, "tls_key_file": settings.tls_key_file,
             "tls_ca_file": settings.tls_ca_file}
    if not any(files.values()):
        return None
    missing = [name for name, path in files.items() if not path]
    if missing:
        raise IdentityError(f"TLS needs all of tls_cert_file, tls_key_file, tls_ca_file; missing: {', '.join(missing)}")
    return svid_from_files(*(Path(p) for p in files.values() if p))


def require_svid(settings: Settings, what: str) -> Svid | None:
    """`load_svid`, for a server or client that must not run without one unless the settings
    say `plaintext`: None only then; IdentityError naming the settings otherwise."""
    svid = load_svid(settings)
    if svid is None and not settings.plaintext:
        raise IdentityError(
            f"{what}: no certificate configured: set tls_cert_file, tls_key_file and tls_ca_file "
            "(`p4nsm certs init DIR` makes a lab's), or spiffe_endpoint_socket for a SPIRE agent, "
            "or plaintext=true to run without TLS")
    return svid


def svid_from_files(cert_file: Path, key_file: Path, ca_file: Path) -> Svid:
    chain = _certificates(cert_file, "tls_cert_file")
    bundle = _certificates(ca_file, "tls_ca_file")
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise IdentityError(f"tls_key_file {key_file}: {e}") from None
    if key.public_key() != chain[0].public_key():
        raise IdentityError(f"tls_key_file {key_file} does not match the certificate of tls_cert_file {cert_file}")
    spiffe_id = spiffe_id_of(chain[0])
    if not spiffe_id:
        raise IdentityError(f"tls_cert_file {cert_file}: the first certificate has no spiffe:// URI SAN")
    return Svid(spiffe_id, tuple(chain), key, tuple(bundle))


def _certificates(path: Path, setting: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as e:
        raise IdentityError(f"{setting} {path}: {e}") from None
    return certs


def _from_workload_api(socket: str) -> Svid:
    from spiffe import WorkloadApiClient
    from spiffe.errors import PySpiffeError

    address = socket if socket.startswith("unix:") else f"unix://{socket}"
    try:
        client = WorkloadApiClient(address, default_timeout=WORKLOAD_API_TIMEOUT)
    except PySpiffeError as e:
        raise IdentityError(f"spiffe_endpoint_socket {socket}: {e}") from None
    try:
        context = client.fetch_x509_context()
    except PySpiffeError as e:
        raise IdentityError(f"spiffe_endpoint_socket {socket}: {e}") from None
    finally:
        client.close()
    svid = context.default_svid
    bundle = context.x509_bundle_set.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
    if bundle is None:
        raise IdentityError(f"spiffe_endpoint_socket {socket}: no bundle for {svid.spiffe_id.trust_domain}")
    # every trust domain the agent federates with counts: its peers may come from any of them
    roots = [c for b in context.x509_bundle_set.bundles for c in b.x509_authorities]
    return Svid(str(svid.spiffe_id), tuple(svid.cert_chain), svid.private_key, tuple(roots))
