"""X509-SVIDs for token tests (the `cryptography` package): a trust domain's CA and the leaf
certificates it signs, each with one `spiffe://` URI SAN, as SPIRE issues them."""

from __future__ import annotations

import dataclasses
import datetime

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.nsm.base import clock
from controller.nsm.base.tokens import Signer, Verifier


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@dataclasses.dataclass(frozen=True)
class TrustDomain:
    key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate

    @classmethod
    def make(cls, name: str = "p4nsm") -> TrustDomain:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        ca = (x509.CertificateBuilder().subject_name(_name(f"{name} CA")).issuer_name(_name(f"{name} CA"))
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                           data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                           crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
              .sign(key, hashes.SHA256()))
        return cls(key, ca)

    def verifier(self) -> Verifier:
        return Verifier([self.ca])

    def svid(self, spiffe_id: str, *, valid_for: float = 86400.0) -> Signer:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(_name(spiffe_id)).issuer_name(self.ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(seconds=valid_for))
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        return Signer(key, (cert,))


def cert_pem(signer: Signer) -> bytes:
    """The leaf as the mTLS handshake hands it over (CallContext.peer_cert)."""
    return signer.chain[0].public_bytes(serialization.Encoding.PEM)


def upstream_token(signer: Signer, audience: str, lifetime: float = 600.0) -> tuple[str, float]:
    """A token as upstream NSM's spiffejwt makes it: ES256, `sub`/`aud`/`exp`, no `x5c` (it is
    verified with the peer's certificate)."""
    expires = float(int(clock.now() + lifetime))
    claims = {"sub": signer.spiffe_id, "aud": [audience], "exp": int(expires)}
    return jwt.encode(claims, signer.key, algorithm="ES256"), expires
