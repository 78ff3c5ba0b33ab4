"""admission: bounded Requests in progress, in all (`Admission`, at the front of the chain) and
per caller identity (`ClientAdmission`, after authorize). Beyond either bound a Request is
refused at once with RESOURCE_EXHAUSTED, before it has made anything: a burst is served or
refused cleanly, and one caller cannot take every slot from the others (600 Requests to an
endpoint that never answers would otherwise hold all of them until the endpoint's timeout).
Close is never refused: it only frees resources.

The identity is `caller_identity`: the mTLS peer, else the `sub` of the first segment's token,
which a caller sends as metadata and updatetoken puts into that segment; authorize has checked
it by then, so a caller cannot spend another's slots by claiming its name. The overall bound
stays at the door, where a refusal costs nothing but a counter: Requests beyond one caller's
share pass it only for the few steps up to `ClientAdmission`, which frees their slots again."""

from __future__ import annotations

from collections import Counter

import grpc

from controller.nsm.base.caller import caller_identity
from controller.nsm.base.errors import NsmError
from controller.nsm.elements.chain import CallContext, Connection, Element, Next, Request


class Admission(Element):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_progress = 0

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        if self.in_progress >= self.limit:
            raise NsmError(grpc.StatusCode.RESOURCE_EXHAUSTED, "", f"{self.in_progress} Requests are in progress "
                           f"(nsm_max_requests_in_progress={self.limit}); retry later")
        self.in_progress += 1
        try:
            return await nxt.request(req, ctx)
        finally:
            self.in_progress -= 1


class ClientAdmission(Element):
    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self.in_progress: Counter[str] = Counter()  # caller identity -> its Requests in progress

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        who = caller_identity(req.connection.path, ctx.peer_identity)
        held = self.in_progress[who]
        if held >= self.per_client:
            raise NsmError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           "" if ctx.peer_identity else "connection.path.path_segments[0].token",
                           f"caller {who or '(anonymous)'!r} has {held} Requests in progress "
                           f"(nsm_max_requests_per_client={self.per_client}); retry later")
        self.in_progress[who] = held + 1
        try:
            return await nxt.request(req, ctx)
        finally:
            self.in_progress[who] -= 1
            if not self.in_progress[who]:
                del self.in_progress[who]
