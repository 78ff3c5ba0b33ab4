"""gRPC's own TLS with an SVID, and the mTLS caller of a servicer context.

gRPC checks a server's certificate against the bundle and the name dialled (DNS/IP SANs; a unix
socket dials as `localhost`), and a client's against the bundle; the SPIFFE id is then read
from the certificate gRPC verified, so no identity is taken from anything the caller merely says."""

from __future__ import annotations

from typing import Protocol

import grpc
from cryptography import x509

from controller.identity.svid import Svid, spiffe_id_of


class _HasAuthContext(Protocol):
    def auth_context(self) -> dict[str, list[bytes]]: ...


def server_credentials(svid: Svid, require_client_auth: bool = True) -> grpc.ServerCredentials:
    """TLS with the SVID's certificate; with `require_client_auth` (mTLS) a client must present a
    certificate that chains to the SVID's bundle, or its handshake fails."""
    return grpc.ssl_server_credentials([(svid.key_pem(), svid.cert_chain_pem())], root_certificates=svid.bundle_pem(),
                                       require_client_auth=require_client_auth)


def channel_credentials(svid: Svid) -> grpc.ChannelCredentials:
    """TLS that trusts the SVID's bundle and presents the SVID to servers that ask (mTLS)."""
    return grpc.ssl_channel_credentials(root_certificates=svid.bundle_pem(), private_key=svid.key_pem(),
                                        certificate_chain=svid.cert_chain_pem())


def peer_certificate_pem(context: _HasAuthContext) -> bytes:
    """The verified certificate the caller presented (PEM), b"" over plaintext or without one."""
    certs = context.auth_context().get("x509_pem_cert") or []
    return certs[0] if certs else b""


def peer_spiffe_id(context: _HasAuthContext) -> str:
    """The SPIFFE id of the caller's verified certificate, "" over plaintext or without one."""
    auth = context.auth_context()
    ids = auth.get("peer_spiffe_id")  # gRPC sets it when the certificate has exactly one spiffe:// URI
    if ids:
        return ids[0].decode()
    certs = auth.get("x509_pem_cert")
    return spiffe_id_of(x509.load_pem_x509_certificate(certs[0])) if certs else ""
