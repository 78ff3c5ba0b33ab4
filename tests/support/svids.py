"""X509-SVIDs for token tests: a trust domain made by the lab CA (`controller.identity`, what
`p4nsm certs init` makes) and SVIDs it issues, as SPIRE would hand them out."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization

from controller.identity import Svid, init_lab_certs, issue
from controller.identity.sources import svid_from_files
from controller.nsm.base import clock
from controller.nsm.base.tokens import Signer, TokenSource, Verifier


@dataclasses.dataclass(frozen=True)
class TrustDomain:
    dir: Path

    @classmethod
    def make(cls, directory: Path) -> TrustDomain:
        init_lab_certs(directory)
        return cls(directory)

    def svid(self, spiffe_id: str) -> Svid:
        name = re.sub(r"[^A-Za-z0-9.-]", "_", spiffe_id)
        cert, key = issue(self.dir, name, spiffe_id)
        return svid_from_files(cert, key, self.dir / "ca.crt")

    def signer(self, spiffe_id: str) -> Signer:
        signer = Signer.of(self.svid(spiffe_id))
        assert signer is not None
        return signer

    def tokens(self, spiffe_id: str, lifetime: float = 60.0) -> TokenSource:
        return TokenSource.of("", lifetime, self.signer(spiffe_id))

    def verifier(self) -> Verifier:
        return Verifier.of(self.svid("spiffe://p4nsm/verifier"))


def cert_pem(signer: Signer) -> bytes:
    """The leaf as the mTLS handshake hands it over (CallContext.peer_cert)."""
    return signer.chain[0].public_bytes(serialization.Encoding.PEM)


def upstream_token(signer: Signer, audience: str, lifetime: float = 600.0) -> tuple[str, float]:
    """A token as upstream NSM's spiffejwt makes it: ES256, `sub`/`aud`/`exp`, no `x5c` (it is
    verified with the peer's certificate)."""
    expires = float(int(clock.now() + lifetime))
    claims = {"sub": signer.spiffe_id, "aud": [audience], "exp": int(expires)}
    return jwt.encode(claims, signer.key, algorithm="ES256"), expires
