"""Who is calling: the identity a connection, an admission slot or a registration belongs to.

With mTLS it is the SPIFFE id of the peer's certificate. Over plaintext it is the `sub` of the
first path segment's token (the client's own segment), which the authorize element has verified
by the time ownership and admission look at it; "" when neither says anything."""

from __future__ import annotations

from controller.nsm.base.tokens import subject
from nsm_api import connection_pb2


def caller_identity(path: connection_pb2.Path, peer_identity: str) -> str:
    if peer_identity:
        return peer_identity
    return subject(path.path_segments[0].token) if path.path_segments else ""
