"""One gNMI client per switch: an ON_CHANGE STREAM subscription to its ports' oper-status.

It subscribes to `/interfaces/interface[name=*]/state/oper-status` and `.../state/ifindex` on
the switch's gRPC address (the P4Runtime one: Stratum and the softswitch serve gNMI there too).
Names map to P4Runtime ports through ifindex, which Stratum and the softswitch report as the
port number P4Runtime uses; a name without an ifindex is reported once and ignored.

Listeners hear (switch, port, up) for each port after the initial sync and at each change, and
(switch, known) when the stream's view becomes valid (sync_response) or is lost (the stream
broke; it is retried with backoff). While it is lost, the switch's ports are unknown, not up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from finsy.proto import gnmi, gnmi_grpc

from controller.aio import cancel_and_wait
from controller.p4rt.client import TlsConfig, open_channel
from controller.settings import Settings

log = logging.getLogger("p4nsm.gnmi")

OPER_STATUS = "oper-status"
IFINDEX = "ifindex"

PortListener = Callable[[str, int, bool], None]  # (switch, port, up)
KnownListener = Callable[[str, bool], None]  # (switch, its port state is known)


def interface_path(leaf: str) -> gnmi.Path:
    return gnmi.Path(elem=[
        gnmi.PathElem(name="interfaces"),
        gnmi.PathElem(name="interface", key={"name": "*"}),
        gnmi.PathElem(name="state"),
        gnmi.PathElem(name=leaf),
    ])


def subscribe_request() -> gnmi.SubscribeRequest:
    return gnmi.SubscribeRequest(subscribe=gnmi.SubscriptionList(
        mode=gnmi.SubscriptionList.STREAM,
        encoding=gnmi.PROTO,
        subscription=[gnmi.Subscription(path=interface_path(leaf), mode=gnmi.ON_CHANGE)
                      for leaf in (OPER_STATUS, IFINDEX)],
    ))


def leaves(notification: gnmi.Notification) -> list[tuple[str, str, gnmi.TypedValue]]:
    """(interface name, leaf, value) of each update, the prefix joined in."""
    out = []
    for update in notification.update:
        elems = [*notification.prefix.elem, *update.path.elem]
        if len(elems) != 4 or elems[1].name != "interface" or "name" not in elems[1].key:
            continue
        out.append((elems[1].key["name"], elems[3].name, update.val))
    return out


class PortStateClient:
    """Follows one switch's port state for the controller's lifetime. Start with `start()`."""

    def __init__(self, name: str, address: str, tls: TlsConfig | None, settings: Settings) -> None:
        self.name = name
        self.address = address
        self.tls = tls
        self.settings = settings
        self.port_listeners: list[PortListener] = []
        self.known_listeners: list[KnownListener] = []
        self.known = False  # a stream is synced now
        self.sessions = 0  # streams that reached their initial sync
        self.ports: dict[str, int] = {}  # interface name -> P4Runtime port (its ifindex)
        self.up: dict[int, bool] = {}  # port -> oper-status is UP
        self._unmapped: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"gnmi:{self.name}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _supervise(self) -> None:
        s = self.settings
        delay = s.reconnect_backoff_min
        while True:
            synced_before = self.sessions
            reason = "stream ended"
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # every failure is retried; the switch's port state must not end
                reason = self._failure(e)
            self._set_known(False, reason)
            if self.sessions != synced_before:
                delay = s.reconnect_backoff_min  # it had worked: retry soon
            log.info("switch=%s event=gnmi_reconnect_wait delay=%.2fs reason=%r", self.name, delay, reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, s.reconnect_backoff_max)

    def _failure(self, e: Exception) -> str:
        if isinstance(e, grpc.aio.AioRpcError):
            return f"{e.code().name}: {e.details()}"
        if isinstance(e, (TimeoutError, OSError)):  # no answer, or the CA file is missing
            return str(e) or type(e).__name__
        log.exception("switch=%s event=gnmi_session_crash", self.name)
        return f"internal error: {e!r}"

    async def _session(self) -> None:
        s = self.settings
        channel = open_channel(self.address, self.tls, [
            ("grpc.initial_reconnect_backoff_ms", int(s.reconnect_backoff_min * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(s.reconnect_backoff_max * 1000)),
        ])
        try:
            await asyncio.wait_for(channel.channel_ready(), s.rpc_timeout)
            call = gnmi_grpc.gNMIStub(channel).Subscribe()
            await call.write(subscribe_request())
            synced = False
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return
                kind = response.WhichOneof("response")
                if kind == "update":
                    self._apply(response.update, report=synced)
                elif kind == "sync_response" and not synced:
                    synced = True
                    self.sessions += 1
                    # The initial values are reported together, as one sync, then the state is known.
                    for port, up in sorted(self.up.items()):
                        self._report(port, up)
                    self._set_known(True, "sync_response")
        finally:
            await channel.close(grace=None)

    def _apply(self, notification: gnmi.Notification, report: bool) -> None:
        statuses: list[tuple[str, str]] = []
        for name, leaf, value in leaves(notification):
            if leaf == IFINDEX and value.WhichOneof("value") == "uint_val":
                self.ports[name] = value.uint_val
            elif leaf == OPER_STATUS:
                statuses.append((name, value.string_val))
        for name, status in statuses:
            port = self.ports.get(name)
            if port is None:
                if name not in self._unmapped:
                    self._unmapped.add(name)
                    log.warning("switch=%s interface=%s event=gnmi_unmapped_interface status=%s "
                                "reason=no_ifindex_for_it", self.name, name, status)
                continue
            up = status == "UP"
            if self.up.get(port) == up:
                continue
            self.up[port] = up
            if report:
                self._report(port, up)

    def _report(self, port: int, up: bool) -> None:
        log.info("switch=%s port=%d event=gnmi_oper_status up=%s", self.name, port, up)
        for listener in self.port_listeners:
            listener(self.name, port, up)

    def _set_known(self, known: bool, reason: str) -> None:
        if known == self.known:
            return
        self.known = known
        if not known:
            self.up.clear()  # a fresh sync reports every port again
        log.log(logging.INFO if known else logging.WARNING, "switch=%s event=gnmi_port_state_%s reason=%r",
                self.name, "known" if known else "unknown", reason)
        for listener in self.known_listeners:
            listener(self.name, known)
