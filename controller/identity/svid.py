"""An X.509 SVID (SPIFFE's identity document): the SPIFFE id lives in the leaf certificate's one
URI SAN (spiffe://trust-domain/path); the trust bundle holds the CA certificates its peers'
certificates must chain to."""

from __future__ import annotations

import dataclasses
import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError


class IdentityError(Exception):
    """An SVID cannot be loaded or does not verify; the message names the file or setting."""


@dataclasses.dataclass(frozen=True)
class Svid:
    spiffe_id: str
    cert_chain: tuple[x509.Certificate, ...]  # leaf first
    private_key: PrivateKeyTypes
    trust_bundle: tuple[x509.Certificate, ...]

    def cert_chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.cert_chain)

    def key_pem(self) -> bytes:
        return self.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())

    def bundle_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.trust_bundle)

    @property
    def leaf(self) -> x509.Certificate:
        return self.cert_chain[0]


def spiffe_id_of(cert: x509.Certificate) -> str:
    """The certificate's spiffe:// URI SAN, "" when it has none (SPIFFE allows exactly one)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    ids = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
    return ids[0] if len(ids) == 1 else ""


def verify_svid(chain_pem: bytes, bundle_pem: bytes, *, at: datetime.datetime | None = None) -> str:
    """The SPIFFE id of a certificate chain (leaf first, PEM) that chains to a CA of the bundle
    and is valid `at` (now by default); IdentityError otherwise. For peers whose certificate
    arrives outside a TLS handshake (a token's signer, a certificate a test holds)."""
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
        roots = x509.load_pem_x509_certificates(bundle_pem)
    except ValueError as e:
        raise IdentityError(f"not a PEM certificate: {e}") from None
    builder = PolicyBuilder().store(Store(roots))
    if at is not None:
        builder = builder.time(at)
    try:
        builder.build_client_verifier().verify(chain[0], chain[1:])
    except VerificationError as e:
        raise IdentityError(f"certificate does not chain to the trust bundle: {e}") from None
    spiffe_id = spiffe_id_of(chain[0])
    if not spiffe_id:
        raise IdentityError("certificate has no spiffe:// URI SAN")
    return spiffe_id
