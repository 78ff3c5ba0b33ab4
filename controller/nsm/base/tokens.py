"""This hop's own tokens.

The stock NSM chains authorize with Any(), so a token only has to carry a `sub` and an `exp`
that Go code can read unverified (the registry derives path_ids from `sub`,
docs/nsm_contract.md §9.2). Without a SPIFFE identity to sign with, tokens are unsigned JWTs
(alg "none"); a deployment with SVIDs would swap in a signing TokenSource without touching the
chain.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

from controller.nsm.base import clock


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclasses.dataclass(frozen=True, slots=True)
class TokenSource:
    subject: str  # a SPIFFE id, e.g. spiffe://p4nsm/controller
    lifetime: float  # seconds

    def issue(self, audience: str = "") -> tuple[str, float]:
        """A fresh token and its expiry (epoch seconds)."""
        expires = clock.now() + self.lifetime
        claims: dict[str, Any] = {"sub": self.subject, "exp": int(expires)}
        if audience:
            claims["aud"] = [audience]
        header = _b64(json.dumps({"alg": "none", "typ": "JWT"}, separators=(",", ":")).encode())
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{header}.{body}.", expires


def claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT, unverified; None when it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        decoded = json.loads(_unb64(parts[1]))
    except (ValueError, UnicodeDecodeError):
        return None
    return decoded if isinstance(decoded, dict) else None


def subject(token: str) -> str:
    sub = (claims(token) or {}).get("sub")
    return sub if isinstance(sub, str) else ""
