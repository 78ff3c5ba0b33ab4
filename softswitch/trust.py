"""Whom the softswitch lets arbitrate and write: an allow-list of client identities per role.

With client authentication on (`--grpc-server-with-client-auth`), TLS admits only clients whose
certificate the CA (`--grpc-server-cacert`) signed. Those identities are the certificate's
subject alternative names, URI (a SPIFFE id) or DNS, as gRPC reports them (`peer_uri`,
`peer_dns`). `--grpc-server-allow IDENTITY[@ROLE]` (repeatable) then names who may take part in
arbitration for a role and write to it (Write, SetForwardingPipelineConfig): without `@ROLE`
every role, with it that role only (`@` alone: the default role). Without any
`--grpc-server-allow`, every client the CA signed may. Reads (Read, GetForwardingPipelineConfig,
Capabilities, gNMI) are open to every client TLS admitted, as for a backup.

So an election id alone never hands a switch over: a client needs a certificate of the CA with
an identity on the list, and a Write must come from the identity whose stream holds the primary
election id, not only carry that id. Without client authentication nobody can be told apart and
the spec's rules apply unchanged: every client is trusted, and main.py logs so at start.
This is what Stratum does with its credentials (the client's certificate identifies it, and its
AuthPolicyChecker decides per RPC who may call it), here per P4Runtime role.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

# gRPC's auth-context properties for the peer certificate's URI and DNS subject alternative names.
_IDENTITY_PROPERTIES = ("peer_uri", "peer_dns")
EVERY_ROLE = None


@dataclasses.dataclass(frozen=True)
class Grant:
    identity: str
    role: str | None  # EVERY_ROLE, or one role ("" the default role)

    @classmethod
    def parse(cls, text: str) -> Grant:
        """IDENTITY (every role) or IDENTITY@ROLE (that role; IDENTITY@ the default role).

        SPIFFE ids and DNS names hold no `@`, so the last one separates the role."""
        identity, sep, role = text.rpartition("@")
        if not sep:
            identity, role_or_every = text, EVERY_ROLE
        else:
            role_or_every = role
        if not identity:
            raise ValueError(f"{text!r}: expected IDENTITY or IDENTITY@ROLE (a SPIFFE id or DNS name)")
        return cls(identity, role_or_every)


def peer_identities(auth_context: Mapping[str, Iterable[bytes]]) -> tuple[str, ...]:
    """The identities a verified client certificate carries (empty over plaintext)."""
    return tuple(v.decode(errors="replace") for key in _IDENTITY_PROPERTIES for v in auth_context.get(key, ()))


class Trust:
    """Decides whether a client's identities may arbitrate for and write to a role."""

    def __init__(self, client_auth: bool, grants: Sequence[Grant] = ()) -> None:
        if grants and not client_auth:
            raise ValueError("an allow-list needs client certificates (client authentication on)")
        self.client_auth = client_auth
        self.grants = tuple(grants)

    @property
    def enforced(self) -> bool:
        """Whether clients are told apart at all (with client authentication on)."""
        return self.client_auth

    def allows(self, identities: Sequence[str], role: str) -> bool:
        if not self.client_auth:
            return True  # nobody can be told apart: the spec's rules alone
        if not identities:
            return False
        if not self.grants:
            return True  # the CA's signature is the trust
        return any(g.identity in identities and g.role in (EVERY_ROLE, role) for g in self.grants)

    def allows_any_role(self, identities: Sequence[str]) -> bool:
        """Whether the identities may write to some role: checked before a request is parsed."""
        if not self.client_auth or not self.grants:
            return self.allows(identities, "")
        return any(g.identity in identities for g in self.grants)


TRUST_EVERYONE = Trust(client_auth=False)
