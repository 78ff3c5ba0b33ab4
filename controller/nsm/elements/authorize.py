"""authorize (docs/nsm_contract.md §6.3): policies over the tokens of the path the caller sent.

A policy is a Python function of the connection and the call: None allows, a string refuses
(PERMISSION_DENIED) and says which token and why. They check the caller's side of the path and
this hop's segment (Go: "authorize server checks left side of Path"), after updatetoken has put
the caller's per-RPC token into the caller's segment. Who may act on which connection is not
decided here (that is ownership, an element of its own); these are about the tokens only.

Each matches one of upstream NSM's default OPA policies (sdk `pkg/tools/opa/policies`):
`tokens_valid`, `tokens_expired`, `tokens_chained`, `prev_token_signed`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import grpc

from controller.nsm.base import clock
from controller.nsm.base.errors import NsmError
from controller.nsm.base.tokens import Claims, TokenError, Verifier, decode
from controller.nsm.elements.chain import CallContext, Connection, Inspect

Policy = Callable[[Connection, CallContext], str | None]


def _field(i: int) -> str:
    return f"connection.path.path_segments[{i}].token"


def _left_side(conn: Connection) -> list[tuple[int, str]]:
    segments = conn.path.path_segments
    return [(i, segments[i].token) for i in range(min(conn.path.index + 1, len(segments)))]


def allow_any(conn: Connection, ctx: CallContext) -> str | None:
    return None


def tokens_valid(conn: Connection, ctx: CallContext) -> str | None:
    """Every token is a JWT with a string `sub` and a numeric `exp` (a token that is not a JWT,
    or none at all, is refused)."""
    for i, token in _left_side(conn):
        try:
            decode(token)
        except TokenError as e:
            return f"{_field(i)}: {e}"
    return None


def tokens_expired(conn: Connection, ctx: CallContext) -> str | None:
    """No token's `exp` has passed (upstream's tokens_expired must be false)."""
    now = clock.now()
    for i, token in _left_side(conn):
        try:
            exp = decode(token).exp
        except TokenError as e:
            return f"{_field(i)}: {e}"
        if exp <= now:
            return f"{_field(i)}: expired {now - exp:.0f} s ago"
    return None


def tokens_chained(conn: Connection, ctx: CallContext) -> str | None:
    """Each token's `aud` names the `sub` of the next segment's token: the caller's token was
    made for this hop, and each earlier one for the hop after it."""
    found: list[tuple[int, Claims]] = []
    for i, token in _left_side(conn):
        try:
            found.append((i, decode(token)))
        except TokenError as e:
            return f"{_field(i)}: {e}"
    for (i, a), (_, b) in itertools.pairwise(found):
        if b.sub not in a.aud:
            return f"{_field(i)}: aud {list(a.aud)} does not name the next hop {b.sub!r}"
    return None


def prev_token_signed(verifier: Verifier) -> Policy:
    """The caller's token is signed by the caller: ES256, with the key of the caller's mTLS
    certificate, or (no certificate on the call) of its `x5c` chain to the trust bundle."""

    def check(conn: Connection, ctx: CallContext) -> str | None:
        prev = conn.path.index - 1
        if prev < 0 or prev >= len(conn.path.path_segments):
            return None  # this hop is the first: nobody sent it a token
        try:
            verifier.verify(conn.path.path_segments[prev].token, ctx.peer_cert)
        except TokenError as e:
            return f"{_field(prev)}: {e}"
        return None

    return check


def all_of(*policies: Policy) -> Policy:
    def check(conn: Connection, ctx: CallContext) -> str | None:
        for policy in policies:
            refused = policy(conn, ctx)
            if refused is not None:
                return refused
        return None

    return check


def path_tokens(verifier: Verifier) -> Policy:
    """The default: with a trust bundle, NSM's four token policies; without one (plaintext)
    nothing can be verified, so a token only has to be a JWT that has not expired, and an
    unsigned token is refused whenever a bundle is configured."""
    if verifier.trusted:
        return all_of(tokens_valid, tokens_expired, tokens_chained, prev_token_signed(verifier))
    return all_of(tokens_valid, tokens_expired)


class Authorize(Inspect):
    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def inspect(self, conn: Connection, ctx: CallContext) -> None:
        if ctx.internal:
            return
        refused = self.policy(conn, ctx)
        if refused is not None:
            field, _, why = refused.partition(": ")
            raise NsmError(grpc.StatusCode.PERMISSION_DENIED, field, why)
