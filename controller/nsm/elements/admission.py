"""admission: a bounded number of Requests in progress; beyond it a Request is refused at once
with RESOURCE_EXHAUSTED, before it has made anything, so a burst is served or refused cleanly.
Close is never refused: it only frees resources."""

from __future__ import annotations

import grpc

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
