"""Point-to-point addresses for an endpoint's connections: each connection gets its own pair of
/32s (/128s) from the endpoint's CIDR, the first for the endpoint side and the second for the
client side, with a route on each side to the other. A pair per connection, rather than one
shared endpoint address, keeps every connection's routes apart in the endpoint's netns."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import grpc
from nsm_api import connectioncontext_pb2

from controller.nsm.begin import ConnState
from controller.nsm.chain import CallContext, Connection, Element, Next, Request
from controller.nsm.errors import NsmError

Pair = tuple[str, str]  # (endpoint address, client address), without prefix length
_PAIR = "ipam.pair"


class PairPool:
    def __init__(self, cidr: str) -> None:
        self.network = ipaddress.ip_network(cidr, strict=False)
        self._used: set[Pair] = set()

    def _pairs(self) -> Iterator[Pair]:
        hosts = self.network.hosts()
        for endpoint, client in zip(hosts, hosts):
            yield str(endpoint), str(client)

    def take(self, wanted: Pair | None = None) -> Pair:
        """A free pair; `wanted` (e.g. what a client still holds after an endpoint restart) if free."""
        if wanted is not None and wanted not in self._used and wanted in set(self._pairs()):
            self._used.add(wanted)
            return wanted
        for pair in self._pairs():
            if pair not in self._used:
                self._used.add(pair)
                return pair
        raise NsmError(grpc.StatusCode.RESOURCE_EXHAUSTED, "connection.context.ip_context",
                       f"address pool {self.network} is exhausted ({len(self._used)} connections)")

    def give(self, pair: Pair) -> None:
        self._used.discard(pair)

    def __len__(self) -> int:
        return len(self._used)


def _held(conn: Connection) -> Pair | None:
    ip = conn.context.ip_context
    if len(ip.dst_ip_addrs) == 1 and len(ip.src_ip_addrs) == 1:
        return ip.dst_ip_addrs[0].split("/")[0], ip.src_ip_addrs[0].split("/")[0]
    return None


class PointToPointIpam(Element):
    def __init__(self, pool: PairPool) -> None:
        self.pool = pool

    def _fill(self, conn: Connection, pair: Pair) -> None:
        bits = self.pool.network.max_prefixlen
        endpoint, client = (f"{a}/{bits}" for a in pair)
        ip = conn.context.ip_context
        del ip.src_ip_addrs[:], ip.dst_ip_addrs[:], ip.src_routes[:], ip.dst_routes[:]
        ip.src_ip_addrs.append(client)
        ip.dst_ip_addrs.append(endpoint)
        ip.src_routes.append(connectioncontext_pb2.Route(prefix=endpoint))
        ip.dst_routes.append(connectioncontext_pb2.Route(prefix=client))

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        st: ConnState | None = ctx.state
        assert st is not None, "ipam needs begin before it"
        pair = st.values.get(_PAIR)
        new = pair is None
        if pair is None:
            pair = self.pool.take(_held(req.connection))
        self._fill(req.connection, pair)
        try:
            resp = await nxt.request(req, ctx)
        except BaseException:
            if new:
                self.pool.give(pair)
            raise
        st.values[_PAIR] = pair
        return resp

    async def close(self, conn: Connection, ctx: CallContext, nxt: Next) -> None:
        try:
            await nxt.close(conn, ctx)
        finally:
            pair = ctx.state.values.pop(_PAIR, None) if ctx.state is not None else None
            if pair is not None:
                self.pool.give(pair)
