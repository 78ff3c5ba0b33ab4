"""forward: the Request goes on to the selected endpoint, which answers with the IP context; the
endpoint's own KERNEL interface lives in its host's netns. While the connection lives, the
endpoint is watched (endpoint_watch).

The Request carries a token of this hop made for the endpoint: its `aud` is the endpoint's
SPIFFE id as the registry recorded it (the registration's first path id, the `sub` of the token
it registered with), so that an endpoint checking the chain of tokens (NSM's tokens_chained)
finds its own id there.

At most `max_in_flight` Requests wait for one endpoint (by URL) at a time: an endpoint that
never answers would otherwise hold every admission slot until its timeout. A Request beyond the
bound is a CandidateFailed (RESOURCE_EXHAUSTED), not the endpoint's failure: selection tries the
next candidate, outlier ejection does not count it (the Requests that do wait and time out are
counted, as they are the endpoint's own failures), and the SDK retries it."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection

import grpc

from controller.nsm.base import kernel
from controller.nsm.base.channels import Channels
from controller.nsm.base.errors import CandidateFailed, EndpointFailed
from controller.nsm.base.metadata import Credentials
from controller.nsm.base.tokens import TokenSource
from controller.nsm.elements.adopt import ENDPOINT, ENDPOINT_IFACE, adopted_of
from controller.nsm.elements.begin import is_refresh, state_of
from controller.nsm.elements.chain import CallContext, Connection, Element, Key, Next, Request
from controller.nsm.elements.endpoint_watch import EndpointWatch
from controller.nsm.elements.placement import endpoint_host
from controller.nsm.elements.select.roundrobin import endpoint_of
from nsm_api import networkservice_pb2, networkservice_pb2_grpc

log = logging.getLogger("p4nsm.nsm")

_ENDPOINT_HOST: Key[str] = Key("forward.endpoint_host")
_ANSWER: Key[Connection] = Key("forward.answer")  # per call and per connection: the endpoint's answer
_URL: Key[str] = Key("forward.url")  # per connection: where to send its Close
_AUDIENCE: Key[str] = Key("forward.audience")  # per connection: the endpoint's SPIFFE id


def endpoint_host_of(ctx: CallContext) -> str:
    """The fabric host the endpoint of this attempt lives on."""
    return ctx.values[_ENDPOINT_HOST]


def set_endpoint_host(ctx: CallContext, host: str) -> None:
    ctx.values[_ENDPOINT_HOST] = host


def answer_of(ctx: CallContext) -> Connection:
    """The endpoint's answer to this attempt (its side's mechanism is in there)."""
    return ctx.values[_ANSWER]


def set_answer(ctx: CallContext, answer: Connection) -> None:
    ctx.values[_ANSWER] = answer


def _adopted_iface(ctx: CallContext, endpoint: str, host: str) -> str:
    """The endpoint-side interface of the connection this call adopts, when it goes to the same
    endpoint on the same host; "" otherwise."""
    plan = adopted_of(ctx)
    if plan is None or plan.labels.get(ENDPOINT) != endpoint or plan.b.host != host:
        return ""
    return plan.labels.get(ENDPOINT_IFACE, "")


class Forward(Element):
    def __init__(self, channels: Channels, hosts: Collection[str], watch: EndpointWatch, timeout: float,
                 tokens: TokenSource, max_in_flight: int | None = None) -> None:
        self.channels = channels
        self.tokens = tokens
        self.hosts = hosts
        self.watch = watch
        self.timeout = timeout
        self.max_in_flight = max_in_flight  # None: unbounded
        self.in_flight: Counter[str] = Counter()  # endpoint URL -> Requests sent, not yet answered

    def _outgoing(self, req: Request, ctx: CallContext, host: str) -> networkservice_pb2.NetworkServiceRequest:
        out = networkservice_pb2.NetworkServiceRequest()
        out.connection.CopyFrom(req.connection)
        out.connection.ClearField("mechanism")
        st = state_of(ctx)
        previous = st.values.get(_ANSWER) if st is not None and is_refresh(ctx) else None
        adopted = _adopted_iface(ctx, endpoint_of(ctx).name, host)
        if previous is not None:
            out.connection.mechanism.CopyFrom(previous.mechanism)
        elif adopted:
            # The name its side has had since an earlier run: a new name would be a second
            # interface on the VLAN the first still holds.
            out.connection.mechanism.CopyFrom(kernel.mechanism(host, adopted))
        else:
            out.mechanism_preferences.append(kernel.mechanism(host, kernel.default_ifname(req.connection.network_service)))
        return out

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        conn = req.connection
        nse = endpoint_of(ctx)
        host = endpoint_host(nse, conn.network_service, self.hosts)
        set_endpoint_host(ctx, host)
        audience = nse.path_ids[0] if nse.path_ids else ""
        answer = await self._ask(nse.name, nse.url, self._outgoing(req, ctx, host),
                                 Credentials(*self.tokens.issue(audience)))
        index = conn.path.index
        if len(answer.path.path_segments) <= index or answer.path.path_segments[index].id != conn.id \
                or answer.mechanism.type != kernel.KERNEL or not answer.mechanism.parameters.get(kernel.NAME_KEY):
            raise EndpointFailed(grpc.StatusCode.INTERNAL, "connection.network_service_endpoint_name",
                                 f"endpoint {nse.name} answered with a foreign path or without a KERNEL interface")
        conn.path.CopyFrom(answer.path)
        conn.path.index = index
        conn.context.CopyFrom(answer.context)
        set_answer(ctx, answer)
        try:
            resp = await nxt.request(req, ctx)
        except BaseException:
            # An adopted connection's endpoint side was not made by this call: it stays.
            if not is_refresh(ctx) and not _adopted_iface(ctx, nse.name, host):
                await self._close_endpoint(nse.url, audience, answer, conn.id)
            raise
        st = state_of(ctx)
        if st is not None:
            st.values[_ANSWER] = answer
            st.values[_URL] = nse.url
            st.values[_AUDIENCE] = audience
            self.watch.watch(nse.url, conn.id)
        return resp

    async def _ask(self, name: str, url: str, out: networkservice_pb2.NetworkServiceRequest,
                   creds: Credentials) -> Connection:
        waiting = self.in_flight[url]
        if self.max_in_flight is not None and waiting >= self.max_in_flight:
            raise CandidateFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, "connection.network_service_endpoint_name",
                                  f"endpoint {name} has {waiting} Requests unanswered "
                                  f"(nsm_max_requests_per_endpoint={self.max_in_flight}); retry later")
        self.in_flight[url] = waiting + 1
        stub = networkservice_pb2_grpc.NetworkServiceStub(self.channels.get(url))
        try:
            answer: Connection = await stub.Request(out, timeout=self.timeout, metadata=creds.as_metadata())
        except grpc.aio.AioRpcError as e:
            raise EndpointFailed(e.code(), "connection.network_service_endpoint_name",
                                 f"endpoint {name} at {url}: {e.code().name}: {e.details()}") from None
        finally:
            self.in_flight[url] -= 1
            if not self.in_flight[url]:
                del self.in_flight[url]
        return answer

    async def close(self, conn: Connection, ctx: CallContext, nxt: Next) -> None:
        st = state_of(ctx)
        try:
            await nxt.close(conn, ctx)
        finally:
            if st is not None:
                answer, url = st.values.pop(_ANSWER, None), st.values.pop(_URL, None)
                audience = st.values.pop(_AUDIENCE, "")
                if answer is not None and url is not None:
                    self.watch.forget(url, conn.id)
                    await self._close_endpoint(url, audience, answer, conn.id)

    async def _close_endpoint(self, url: str, audience: str, answer: Connection, conn_id: str) -> None:
        """Best effort: a dead endpoint cannot be told, and its own expiry frees what it holds."""
        stub = networkservice_pb2_grpc.NetworkServiceStub(self.channels.get(url))
        try:
            await stub.Close(answer, timeout=self.timeout, metadata=Credentials(*self.tokens.issue(audience)).as_metadata())
        except grpc.aio.AioRpcError as e:
            log.warning("connection=%s endpoint_url=%s event=endpoint_close_failed code=%s error=%s",
                        conn_id, url, e.code().name, e.details())
