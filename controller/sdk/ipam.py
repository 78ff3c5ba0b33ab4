"""Point-to-point addresses for an endpoint's connections: each connection gets its own pair of
/32s (/128s) from the endpoint's CIDR, the first for the endpoint side and the second for the
client side, with a route on each side to the other. A pair per connection, rather than one
shared endpoint address, keeps every connection's routes apart in the endpoint's netns."""

from __future__ import annotations

import heapq
import ipaddress

import grpc

from controller.nsm.base.errors import NsmError
from controller.nsm.elements.begin import state_of
from controller.nsm.elements.chain import CallContext, Connection, Element, Key, Next, Request
from nsm_api import connectioncontext_pb2

Pair = tuple[str, str]  # (endpoint address, client address), without prefix length
_PAIR: Key[Pair] = Key("ipam.pair")  # per connection: the addresses it holds


class PairPool:
    """Pair k is (first host + 2k, first host + 2k + 1); freed pairs are reused lowest first."""

    def __init__(self, cidr: str) -> None:
        self.network = ipaddress.ip_network(cidr, strict=False)
        if self.network.num_addresses < 4:
            raise ValueError(f"cidr {cidr}: a pool needs at least 4 addresses")
        self._base = int(self.network.network_address) + 1
        self._size = (self.network.num_addresses - 2) // 2
        self._used: set[int] = set()
        self._freed: list[int] = []
        self._next = 0  # pairs from here on have never been handed out

    def _pair(self, k: int) -> Pair:
        addr = self.network.network_address.__class__
        return str(addr(self._base + 2 * k)), str(addr(self._base + 2 * k + 1))

    def _index(self, pair: Pair) -> int | None:
        try:
            endpoint, client = (int(ipaddress.ip_address(a)) for a in pair)
        except ValueError:
            return None
        k, odd = divmod(endpoint - self._base, 2)
        return k if not odd and client == endpoint + 1 and 0 <= k < self._size else None

    def take(self, wanted: Pair | None = None) -> Pair:
        """A free pair; `wanted` (e.g. what a client still holds after an endpoint restart) if free."""
        k = self._index(wanted) if wanted is not None else None
        if k is None or k in self._used:
            k = self._free_index()
        self._used.add(k)
        return self._pair(k)

    def _free_index(self) -> int:
        while self._freed:
            k = heapq.heappop(self._freed)
            if k not in self._used:
                return k
        while self._next < self._size:
            self._next += 1
            if self._next - 1 not in self._used:
                return self._next - 1
        raise NsmError(grpc.StatusCode.RESOURCE_EXHAUSTED, "connection.context.ip_context",
                       f"address pool {self.network} is exhausted ({len(self._used)} connections)")

    def give(self, pair: Pair) -> None:
        k = self._index(pair)
        if k is not None and k in self._used:
            self._used.discard(k)
            heapq.heappush(self._freed, k)

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
        st = state_of(ctx)
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
            st = state_of(ctx)
            pair = st.values.pop(_PAIR, None) if st is not None else None
            if pair is not None:
                self.pool.give(pair)
