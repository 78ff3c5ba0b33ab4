"""client_mechanism (docs/nsm_contract.md §7.4): the client's KERNEL mechanism, its interface name and the
fabric host it lives on (its netns: the host of the same name)."""

from __future__ import annotations

from collections.abc import Collection

from controller.nsm.base import kernel
from controller.nsm.base.errors import invalid, not_found
from controller.nsm.elements.chain import CallContext, Connection, Element, Key, Next, Request

_CLIENT_HOST: Key[str] = Key("client_mechanism.host")


def client_host_of(ctx: CallContext) -> str:
    """The fabric host the client lives on."""
    return ctx.values[_CLIENT_HOST]


def set_client_host(ctx: CallContext, host: str) -> None:
    ctx.values[_CLIENT_HOST] = host


class ClientMechanism(Element):
    def __init__(self, hosts: Collection[str]) -> None:
        self.hosts = hosts

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        conn = req.connection
        field = "connection.mechanism"
        if not conn.HasField("mechanism"):
            # validate has made sure a KERNEL preference exists.
            at, chosen = next((i, m) for i, m in enumerate(req.mechanism_preferences) if m.type == kernel.KERNEL)
            conn.mechanism.CopyFrom(chosen)
            field = f"mechanism_preferences[{at}]"
        mech = conn.mechanism
        params = mech.parameters
        host = params.get(kernel.NETNS_NAME_KEY) or conn.labels.get(kernel.NETNS_NAME_KEY, "")
        if not host and params.get(kernel.NETNS_URL_KEY):
            host = kernel.netns_of_url(params[kernel.NETNS_URL_KEY]) or ""
            if not host:
                raise not_found(f"{field}.parameters[{kernel.NETNS_URL_KEY!r}]",
                                f"{params[kernel.NETNS_URL_KEY]!r} is no named network namespace of this machine")
        if not host:
            raise invalid(f"{field}.parameters[{kernel.NETNS_URL_KEY!r}]",
                          "the client's netns is required: file:///var/run/netns/<host>, or the parameter or label "
                          f"{kernel.NETNS_NAME_KEY!r}")
        if host not in self.hosts:
            raise not_found(f"{field}.parameters[{kernel.NETNS_URL_KEY!r}]",
                            f"netns {host!r} is not a host of the fabric (hosts: {', '.join(sorted(self.hosts))})")
        mech.cls = mech.cls or kernel.LOCAL
        if not params.get(kernel.NETNS_URL_KEY):
            params[kernel.NETNS_URL_KEY] = kernel.netns_url(host)
        if not params.get(kernel.NAME_KEY):
            params[kernel.NAME_KEY] = kernel.default_ifname(conn.network_service)
        set_client_host(ctx, host)
        return await nxt.request(req, ctx)
