"""The softswitch's gNMI subset: each port's oper-status (from the netlink carrier ports.py
follows) and its ifindex, read with Get and followed with an ON_CHANGE Subscribe.

Served on the P4Runtime server's own address (Stratum serves both services on each of its
ports), so a controller needs no second address per switch.

Paths (OpenConfig interfaces), `name` being the port's Linux interface name, or `*`:

    /interfaces/interface[name=IFNAME]/state/oper-status   string_val UP, DOWN or NOT_PRESENT
    /interfaces/interface[name=IFNAME]/state/ifindex       uint_val: the P4Runtime port number

ifindex is the switch's port number, not the kernel's ifindex: Stratum reports its SDK port
there, which is what its P4Runtime ports are, and a client maps names to ports through it.

Capabilities; Get; Subscribe in STREAM mode with ON_CHANGE (or TARGET_DEFINED, served as
ON_CHANGE) subscriptions and in ONCE mode: the current values, then sync_response, then (STREAM)
one notification per change. SAMPLE subscriptions, POLL mode and Set are UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable

import grpc
from finsy.proto import gnmi, gnmi_grpc

from softswitch.decoding import MalformedRequest, add_servicer
from softswitch.ports import Port, Ports
from softswitch.server import _abort

log = logging.getLogger("p4nsm.softswitch.gnmi")

GNMI_VERSION = "0.10.0"
MODELS = [gnmi.ModelData(name="openconfig-interfaces", organization="OpenConfig working group", version="2.4.3")]
OPER_STATUS = "oper-status"
IFINDEX = "ifindex"
LEAVES = (OPER_STATUS, IFINDEX)
QUEUE_LIMIT = 1024  # per subscriber; a client this far behind is cut off, not buffered for

Leaf = tuple[str, str]  # (interface name, leaf)


class PathError(Exception):
    """A path outside the subset: (grpc code, message)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def oper_status(port: Port) -> str:
    if port.up:
        return "UP"
    return "DOWN" if port.sock is not None else "NOT_PRESENT"


def leaf_path(name: str, leaf: str) -> gnmi.Path:
    return gnmi.Path(elem=[
        gnmi.PathElem(name="interfaces"),
        gnmi.PathElem(name="interface", key={"name": name}),
        gnmi.PathElem(name="state"),
        gnmi.PathElem(name=leaf),
    ])


def _joined(prefix: gnmi.Path, path: gnmi.Path) -> list[gnmi.PathElem]:
    return [*prefix.elem, *path.elem]


class GnmiServer(gnmi_grpc.gNMIServicer):
    def __init__(self, ports: Ports) -> None:
        self.ports = ports
        self._subscribers: set[asyncio.Queue[Port | None]] = set()
        ports.carrier_listeners.append(self._on_carrier)

    def add_to(self, server: grpc.aio.Server) -> None:
        add_servicer(server, gnmi_grpc.add_gNMIServicer_to_server, self, log)

    def close(self) -> None:
        """End every subscription (the server is stopping)."""
        for queue in self._subscribers:
            queue.put_nowait(None)

    # -- paths --------------------------------------------------------------------------------

    def resolve(self, prefix: gnmi.Path, path: gnmi.Path) -> list[Leaf]:
        """The (interface, leaf) pairs a path names; PathError when it is outside the subset."""
        elems = _joined(prefix, path)
        names = [e.name for e in elems]
        if names[:2] != ["interfaces", "interface"] or len(names) > 4 or (len(names) >= 3 and names[2] != "state"):
            raise PathError(grpc.StatusCode.UNIMPLEMENTED,
                            f"path {'/'.join(names) or '/'} is not served: only "
                            "/interfaces/interface[name=*]/state/{oper-status,ifindex}")
        leaves = list(LEAVES) if len(names) < 4 else [names[3]]
        if leaves[0] not in LEAVES:
            raise PathError(grpc.StatusCode.UNIMPLEMENTED, f"leaf {leaves[0]} is not served: only {', '.join(LEAVES)}")
        wanted = dict(elems[1].key).get("name", "*")
        ports = sorted(self.ports.by_number.values(), key=lambda p: p.number)
        if wanted != "*":
            ports = [p for p in ports if p.ifname == wanted]
            if not ports:
                raise PathError(grpc.StatusCode.NOT_FOUND, f"no interface named {wanted!r}")
        return [(p.ifname, leaf) for p in ports for leaf in leaves]

    def _value(self, leaf: Leaf) -> gnmi.TypedValue:
        port = next(p for p in self.ports.by_number.values() if p.ifname == leaf[0])
        if leaf[1] == IFINDEX:
            return gnmi.TypedValue(uint_val=port.number)
        return gnmi.TypedValue(string_val=oper_status(port))

    def notification(self, leaves: Iterable[Leaf]) -> gnmi.Notification:
        return gnmi.Notification(
            timestamp=time.time_ns(),
            update=[gnmi.Update(path=leaf_path(*leaf), val=self._value(leaf)) for leaf in leaves],
        )

    # -- RPCs -----------------------------------------------------------------------------------

    async def Capabilities(self, request, context):
        return gnmi.CapabilityResponse(supported_models=MODELS, supported_encodings=[gnmi.PROTO, gnmi.JSON],
                                       gNMI_version=GNMI_VERSION)

    async def Get(self, request, context):
        try:
            leaves = [leaf for path in request.path for leaf in self.resolve(request.prefix, path)]
        except PathError as err:
            await _abort(context, err.code, err.message)
        return gnmi.GetResponse(notification=[self.notification(leaves)])

    async def Set(self, request, context):
        await _abort(context, grpc.StatusCode.UNIMPLEMENTED, "Set is not supported: port state is read-only here")

    async def Subscribe(self, request_iterator, context) -> AsyncIterator[gnmi.SubscribeResponse]:
        try:
            first = await anext(aiter(request_iterator), None)
        except MalformedRequest as err:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if first is None or first.WhichOneof("request") != "subscribe":
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the first SubscribeRequest must hold a SubscriptionList")
        sub = first.subscribe
        mode = gnmi.SubscriptionList.Mode
        if sub.mode == mode.Value("POLL"):
            await _abort(context, grpc.StatusCode.UNIMPLEMENTED, "POLL mode is not supported: use STREAM or ONCE")
        leaves: list[Leaf] = []
        try:
            for s in sub.subscription:
                if sub.mode == mode.Value("STREAM") and s.mode == gnmi.SAMPLE:
                    raise PathError(grpc.StatusCode.UNIMPLEMENTED, "SAMPLE subscriptions are not supported: use ON_CHANGE")
                leaves.extend(self.resolve(sub.prefix, s.path))
        except PathError as err:
            await _abort(context, err.code, err.message)
        if not leaves:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the SubscriptionList names no path")
        # Registered before the initial values are taken: a change in between is sent after them.
        queue: asyncio.Queue[Port | None] = asyncio.Queue()
        self._subscribers.add(queue)
        peer = context.peer()
        log.info("event=gnmi_subscribe device=%d peer=%s mode=%s leaves=%d", self.ports.device_id, peer,
                 mode.Name(sub.mode), len(leaves))
        # What the subscriber is told first, taken before anything is yielded: a change made
        # while the generator waits to resume after the sync would otherwise be read as the
        # state already sent, and never reported.
        followed = {name for name, leaf in leaves if leaf == OPER_STATUS}
        sent = {name: self._value((name, OPER_STATUS)).string_val for name in followed}
        initial = self.notification(leaves)
        try:
            if not sub.updates_only:
                yield gnmi.SubscribeResponse(update=initial)
            yield gnmi.SubscribeResponse(sync_response=True)
            if sub.mode == mode.Value("ONCE"):
                return
            while True:
                port = await queue.get()
                if port is None:
                    return
                if queue.qsize() > QUEUE_LIMIT:
                    await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "subscriber too slow")
                status = oper_status(port)
                if port.ifname in followed and sent.get(port.ifname) != status:
                    sent[port.ifname] = status
                    yield gnmi.SubscribeResponse(update=self.notification([(port.ifname, OPER_STATUS)]))
        finally:
            self._subscribers.discard(queue)
            log.info("event=gnmi_subscription_ended device=%d peer=%s", self.ports.device_id, peer)

    # -- carrier --------------------------------------------------------------------------------

    def _on_carrier(self, port: Port) -> None:
        for queue in self._subscribers:
            queue.put_nowait(port)
