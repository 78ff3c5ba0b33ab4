"""The tokens of NSM path segments (docs/nsm_contract.md §6): this hop's own, and the checks of
those a caller sends.

With an SVID a token is what upstream NSM's spiffejwt makes: an ES256 JWT signed with the SVID's
key, `sub` the SVID's SPIFFE id, `aud` the hop it is sent to, `exp`. The hop it is sent to
verifies it with the certificate the caller presented in the mTLS handshake (which the handshake
checked against the trust bundle), as upstream's prev_token_signed policy does.

Without an SVID (plaintext, no trust bundle) tokens are unsigned JWTs (alg "none"): they carry
the `sub` and `exp` Go code reads unverified (the registry derives path_ids from `sub`, §9.2),
and the checks keep only what needs no key: a JWT, a string `sub`, an `exp` still ahead.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from controller.identity import Svid, spiffe_id_of
from controller.nsm.base import clock

SIGNED_ALG = "ES256"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclasses.dataclass(frozen=True)
class Signer:
    """What signing needs from an X509-SVID: its key and its chain (leaf first)."""

    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.key, ec.EllipticCurvePrivateKey) or not isinstance(self.key.curve, ec.SECP256R1):
            raise ValueError("an SVID key for ES256 tokens must be an EC P-256 key")
        if not self.chain or not spiffe_id_of(self.chain[0]):
            raise ValueError("the SVID's leaf certificate has no SPIFFE id (one spiffe:// URI SAN)")

    @classmethod
    def of(cls, svid: Svid | None) -> Signer | None:
        if svid is None:
            return None
        if not isinstance(svid.private_key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"the SVID of {svid.spiffe_id} has no EC P-256 key to sign ES256 tokens with")
        return cls(svid.private_key, svid.cert_chain)

    @property
    def spiffe_id(self) -> str:
        return spiffe_id_of(self.chain[0])


@dataclasses.dataclass(frozen=True)
class TokenSource:
    subject: str  # a SPIFFE id, e.g. spiffe://p4nsm/controller; the signer's when there is one
    lifetime: float  # seconds
    signer: Signer | None = None

    @classmethod
    def of(cls, subject: str, lifetime: float, signer: Signer | None = None) -> TokenSource:
        """Tokens of `signer`'s SPIFFE id when there is a signer (a `sub` other than the
        certificate's would not verify), else of `subject`, unsigned."""
        return cls(signer.spiffe_id if signer is not None else subject, lifetime, signer)

    def issue(self, audience: str = "") -> tuple[str, float]:
        """A fresh token for `audience` (the SPIFFE id of the hop it is sent to) and its expiry
        (epoch seconds): never after the signer's certificate, as upstream NSM does."""
        expires = clock.now() + self.lifetime
        if self.signer is not None:
            expires = min(expires, self.signer.chain[0].not_valid_after_utc.timestamp())
        claims: dict[str, Any] = {"sub": self.subject, "exp": int(expires)}
        if audience:
            claims["aud"] = [audience]
        if self.signer is not None:
            key: Any = self.signer.key  # pyjwt before 2.8 types its keys as str; it takes key objects
            token = jwt.encode(claims, key, algorithm=SIGNED_ALG)
            return token, float(int(expires))
        header = _b64(json.dumps({"alg": "none", "typ": "JWT"}, separators=(",", ":")).encode())
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{header}.{body}.", float(int(expires))


def claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT, unverified; None when it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        decoded = json.loads(_unb64(parts[1]))
    except (ValueError, UnicodeDecodeError, binascii.Error):
        return None
    return decoded if isinstance(decoded, dict) else None


def subject(token: str) -> str:
    sub = (claims(token) or {}).get("sub")
    return sub if isinstance(sub, str) else ""


class TokenError(Exception):
    """Why a token is refused (the message reads after the field's name)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    aud: tuple[str, ...]
    exp: float


def decode(token: str) -> Claims:
    """The claims of a JWT, unverified, once its shape is right: three parts, a JSON header
    with an `alg`, JSON claims with a string `sub`, a numeric `exp` and `aud` a string or a
    list of strings (RFC 7519 §4.1.3)."""
    if not token:
        raise TokenError("is missing")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError:
        raise TokenError("is not a JWT") from None
    body = claims(token)
    if body is None or not isinstance(header.get("alg"), str):
        raise TokenError("is not a JWT")
    sub, exp, aud = body.get("sub"), body.get("exp"), body.get("aud", [])
    if not isinstance(sub, str) or not sub:
        raise TokenError("has no sub")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise TokenError("has no numeric exp")
    if isinstance(aud, str):
        aud = [aud]
    if not isinstance(aud, list) or not all(isinstance(a, str) for a in aud):
        raise TokenError("has an aud that is neither a string nor a list of strings")
    return Claims(sub, tuple(aud), float(exp))


class Verifier:
    """Checks the signature of a caller's token with the caller's certificate, which the mTLS
    handshake checked against this hop's trust bundle. Without a bundle (plaintext) there is no
    such certificate: `trusted` is False and `verify` refuses every token, so the policies that
    need a signature are only used when there is one."""

    def __init__(self, bundle: Sequence[x509.Certificate] = ()) -> None:
        self.bundle = tuple(bundle)

    @classmethod
    def of(cls, svid: Svid | None) -> Verifier:
        return cls(svid.trust_bundle if svid is not None else ())

    @property
    def trusted(self) -> bool:
        return bool(self.bundle)

    def verify(self, token: str, peer_cert: bytes = b"") -> Claims:
        """The claims of a token signed (ES256) by the SPIFFE id in its `sub`, with the key of
        `peer_cert` (the mTLS peer's certificate, PEM, leaf first, which its handshake checked
        against the bundle)."""
        found = decode(token)
        if not self.trusted:
            raise TokenError("cannot be verified: no trust bundle is configured")
        alg = jwt.get_unverified_header(token).get("alg")
        if alg != SIGNED_ALG:
            raise TokenError(f"is not signed with {SIGNED_ALG} (alg {alg!r})")
        if not peer_cert:
            raise TokenError("cannot be verified: the call came without a peer certificate (mTLS)")
        try:
            cert = x509.load_pem_x509_certificate(peer_cert)
        except ValueError:
            raise TokenError("cannot be verified: the peer's certificate is not PEM") from None
        if spiffe_id_of(cert) != found.sub:
            raise TokenError(f"has sub {found.sub!r} but the caller is {spiffe_id_of(cert) or 'a certificate without a SPIFFE id'}")
        if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
            raise TokenError("is signed by a certificate whose key is not EC")
        key: Any = cert.public_key()
        try:
            # exp, aud and the rest are the policies' to judge; here only the signature counts
            jwt.decode(token, key, algorithms=[SIGNED_ALG], options={"verify_exp": False, "verify_aud": False})
        except jwt.InvalidTokenError as e:
            raise TokenError(f"signature does not verify: {e}") from None
        return found
