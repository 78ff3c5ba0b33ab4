"""authorize (docs/nsm_contract.md §6.3): a policy over the path the caller sent. The SDK's stock chains use
Any(), which allows everything, and so does the default here; a deployment passes its own."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from controller.nsm.base import clock
from controller.nsm.base.errors import NsmError
from controller.nsm.base.tokens import claims
from controller.nsm.elements.chain import CallContext, Connection, Inspect

Policy = Callable[[Connection, CallContext], bool]


def allow_any(conn: Connection, ctx: CallContext) -> bool:
    return True


def tokens_unexpired(conn: Connection, ctx: CallContext) -> bool:
    """`tokens_valid` + `tokens_expired` on the caller's side of the path: every token up to this
    hop decodes as a JWT whose `exp` is in the future."""
    now = clock.now()
    for seg in conn.path.path_segments[: conn.path.index + 1]:
        exp = (claims(seg.token) or {}).get("exp")
        if not isinstance(exp, (int, float)) or exp <= now:
            return False
    return True


class Authorize(Inspect):
    def __init__(self, policy: Policy = allow_any) -> None:
        self.policy = policy

    def inspect(self, conn: Connection, ctx: CallContext) -> None:
        if not ctx.internal and not self.policy(conn, ctx):
            raise NsmError(grpc.StatusCode.PERMISSION_DENIED, "connection.path", "no sufficient privileges")
