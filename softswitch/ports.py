"""Switch ports on Linux interfaces: AF_PACKET sockets, carrier followed over netlink.

Frames are read on the asyncio loop (`loop.add_reader`), up to RX_BUDGET per wakeup and port,
so that a flooded port cannot starve the others or the gRPC server that shares the loop.

Control frames (CONTROL_ETHERTYPES: the controller's link probes) get a socket of their own per
port, as a hardware switch gives them a queue of their own: a port backlogged with data (its
socket buffer holds ~0.5 s of small frames) would otherwise hold them back long enough for a
healthy but busy link to look dead. The data socket skips them. The controller's packet-outs
leave through the control socket too: a data socket's send buffer fills while the kernel has
not yet delivered what it sent (on a starved machine, tens of ms of a busy link), and a probe
sent behind that would be lost with it. Control sockets also take the
kernel's receive time of each frame (SO_TIMESTAMPNS): a probe's packet-in carries when it reached
the port, not when the loop got to it, so that the controller can order arrivals at different
switches whatever backlog each switch's loop has (controller/heal/link_monitor.py), and are read
together, every port's at once, and handled in that order.

The kernel always moves an outer 802.1Q tag out of the frame into packet metadata before a
packet socket sees it: in software on veth, whatever `ethtool -K rxvlan` says. The tag comes
back through PACKET_AUXDATA. 802.1Q (TPID 0x8100) tags are handed to the pipeline beside the
untagged frame, which is what the pipeline needs to push a label without re-inserting the tag
first; any other TPID is put back into the frame, where the pipeline treats it like the P4
parser would (not a VLAN frame).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK

log = logging.getLogger("softswitch.ports")

# Frames handled per port and per loop wakeup before the loop gets a turn.
RX_BUDGET = 64
# Largest frame read; a longer one (beyond any MTU configured in practice) arrives truncated
# and is dropped.
RX_BUFFER = 16384
# Socket receive buffer: absorbs bursts while the loop serves gRPC or other ports.
SOCKET_RCVBUF = 4 * 1024 * 1024
# Pause before the carrier watcher is restarted after a failure (s).
NETLINK_RESTART_DELAY = 1.0

ETH_P_ALL = 0x0003
CONTROL_ETHERTYPES = (0x88B5,)  # what nsm_fabric punts to the controller; LLDP would go here too
_CONTROL_TYPES = frozenset(t.to_bytes(2, "big") for t in CONTROL_ETHERTYPES)
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_AUXDATA = 8
PACKET_IGNORE_OUTGOING = 23
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35  # also SCM_TIMESTAMPNS: struct timespec of CLOCK_REALTIME
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
ETH_P_8021Q = 0x8100
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
RTM_NEWLINK = 16
RTM_DELLINK = 17
# A plain int: socket.MSG_TRUNC is an IntFlag, whose `&` costs microseconds per frame.
MSG_TRUNC = int(socket.MSG_TRUNC)

# struct tpacket_auxdata: status, len, snaplen, mac, net, vlan_tci, vlan_tpid
_AUXDATA = struct.Struct("=IIIHHHH")
_ANCILLARY_SPACE = socket.CMSG_SPACE(_AUXDATA.size)
_TIMESPEC = struct.Struct("=qq")
_CONTROL_ANCILLARY_SPACE = _ANCILLARY_SPACE + socket.CMSG_SPACE(_TIMESPEC.size)
_TAG = struct.Struct("!HH")

# (ingress port, frame, tci): tci is the 802.1Q tag the kernel took out of the frame, or -1.
FrameHandler = Callable[["Port", bytes, int], None]
# Called when a port's carrier, or its interface's presence, may have changed (gNMI follows it).
CarrierListener = Callable[["Port"], None]


class Port:
    """One switch port: its interface, socket (None while the interface is absent) and counters."""

    __slots__ = (
        "number", "ifname", "ifindex", "sock", "control_socks", "up", "device_id",
        "rx", "rx_bytes", "tx", "tx_bytes", "drops", "tx_errors", "arrived_ns",
    )

    def __init__(self, number: int, ifname: str, device_id: int) -> None:
        self.number = number
        self.ifname = ifname
        self.device_id = device_id
        self.ifindex = 0
        self.sock: socket.socket | None = None
        self.control_socks: list[socket.socket] = []
        self.up = False
        self.rx = 0
        self.rx_bytes = 0
        self.tx = 0
        self.tx_bytes = 0
        # Frames that arrived here and that the pipeline dropped.
        self.drops = 0
        self.tx_errors = 0
        # CLOCK_MONOTONIC ns at which the control frame being handled reached the port (the
        # kernel's receive time); 0 when unknown
        self.arrived_ns = 0

    def transmit(self, frame: bytes, control: bool = False) -> None:
        """Send a frame out of the port; `control` frames (the controller's packet-outs) through
        a control socket, whose send buffer data that waits to leave never fills."""
        sock = self.control_socks[0] if control and self.control_socks else self.sock
        if sock is None:
            self.tx_errors += 1
            return
        try:
            sock.send(frame)
        except OSError:
            # Full queue, interface down or gone: the frame is lost, as on a real wire.
            self.tx_errors += 1
            return
        self.tx += 1
        self.tx_bytes += len(frame)

    def counters(self) -> dict[str, int]:
        return {
            "rx": self.rx, "rx_bytes": self.rx_bytes, "tx": self.tx, "tx_bytes": self.tx_bytes,
            "drops": self.drops, "tx_errors": self.tx_errors,
        }


def open_packet_socket(ifname: str, ifindex: int, protocol: int = ETH_P_ALL, timestamps: bool = False) -> socket.socket:
    """A socket for the frames of `protocol` (an EtherType, or ETH_P_ALL) on one interface; with
    `timestamps`, each frame comes with the kernel's receive time."""
    # Protocol 0 until bind: a socket opened with ETH_P_ALL would queue frames of every
    # interface in the namespace until it is bound to this one.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        if timestamps:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_RCVBUF)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF)
        # A switch port takes every frame, not only those addressed to the interface's MAC;
        # the membership ends with the socket.
        mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        sock.bind((ifname, protocol))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Ports:
    """The switch's ports: frame I/O on the loop and their carrier state from netlink."""

    def __init__(self, device_id: int, interfaces: Iterable[tuple[int, str]]) -> None:
        self.device_id = device_id
        self.by_number: dict[int, Port] = {}
        self._by_name: dict[str, Port] = {}
        for number, ifname in interfaces:
            if number in self.by_number or ifname in self._by_name:
                raise ValueError(f"port {number}@{ifname}: port number or interface given twice")
            port = Port(number, ifname, device_id)
            self.by_number[number] = port
            self._by_name[ifname] = port
        # Read at every wakeup, so that a pipeline commit takes effect at the next frame.
        self.on_frame: FrameHandler = self._discard
        self.carrier_listeners: list[CarrierListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ipr: AsyncIPRoute | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._errors = 0
        self._oversized_frames = 0
        # control frames read but not yet handled: stamped after what _drain_control could vouch for
        self._held: list[tuple[int, Port, bytes, int]] = []
        self._drain_again: asyncio.Handle | None = None

    @staticmethod
    def _discard(port: Port, frame: bytes, tci: int) -> None:
        port.drops += 1

    def port_up(self, number: int) -> bool:
        port = self.by_number.get(number)
        return port is not None and port.up

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Attach every port whose interface exists and start following link events."""
        self._loop = asyncio.get_running_loop()
        await self._open_netlink()
        self._watcher = asyncio.create_task(self._supervise_watcher(), name=f"ports-netlink-{self.device_id}")
        for port in self.by_number.values():
            if port.sock is None:
                log.warning(
                    "event=interface_absent device=%d port=%d ifname=%s state=down_until_it_appears",
                    self.device_id, port.number, port.ifname,
                )

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except asyncio.CancelledError:
                pass
            self._watcher = None
        self._close_netlink()
        for port in self.by_number.values():
            self._detach(port)
        if self._drain_again is not None:
            self._drain_again.cancel()
            self._drain_again = None
        self._held = []
        self.log_counters()

    def log_counters(self) -> None:
        for port in self.by_number.values():
            log.info("event=port_counters device=%d port=%d ifname=%s up=%s %s", self.device_id, port.number,
                     port.ifname, port.up, " ".join(f"{k}={v}" for k, v in port.counters().items()))

    # -- netlink ----------------------------------------------------------------------------

    async def _open_netlink(self) -> None:
        """Subscribe first, then dump: a change between the two is seen as an event."""
        ipr = AsyncIPRoute()
        try:
            await ipr.bind(groups=RTMGRP_LINK)
            present = set()
            async for msg in await ipr.link("dump"):
                present.add(msg["index"])
                self._on_link(msg, RTM_NEWLINK)
        except BaseException:
            ipr.close()
            raise
        self._ipr = ipr
        # After a watcher restart: interfaces that went away while nobody listened.
        for port in self.by_number.values():
            if port.sock is not None and port.ifindex not in present:
                self._removed(port)

    def _close_netlink(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    async def _supervise_watcher(self) -> None:
        while True:
            try:
                await self._watch_links()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event=link_watcher_failed device=%d action=resync", self.device_id)
            self._close_netlink()
            await asyncio.sleep(NETLINK_RESTART_DELAY)
            try:
                await self._open_netlink()
            except OSError:
                log.exception("event=netlink_reopen_failed device=%d", self.device_id)

    async def _watch_links(self) -> None:
        if self._ipr is None:
            raise RuntimeError("netlink socket not open")
        ipr = self._ipr
        while True:
            async for msg in ipr.get():
                self._on_link(msg, msg["header"]["type"])

    def _on_link(self, msg: dict, kind: int) -> None:
        index = msg["index"]
        name = msg.get("ifname")
        port = next((p for p in self.by_number.values() if p.ifindex == index and p.sock is not None), None)
        if kind == RTM_DELLINK:
            if port is not None:
                self._removed(port)
            return
        if kind != RTM_NEWLINK:
            return
        if port is not None and name is not None and name != port.ifname:
            log.warning("event=interface_renamed device=%d port=%d ifname=%s new_name=%s state=down",
                        self.device_id, port.number, port.ifname, name)
            self._detach(port)
            port = None
        if port is None:
            port = self._by_name.get(name) if name is not None else None
            if port is None or port.sock is not None:
                return
            self._attach(port, index)
            if port.sock is None:
                return
        self._set_carrier(port, msg["flags"])

    def _removed(self, port: Port) -> None:
        log.warning("event=interface_removed device=%d port=%d ifname=%s ifindex=%d state=down",
                    self.device_id, port.number, port.ifname, port.ifindex)
        self._detach(port)

    def _set_carrier(self, port: Port, flags: int) -> None:
        up = bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP)
        if up != port.up:
            port.up = up
            log.info("event=port_%s device=%d port=%d ifname=%s", "up" if up else "down",
                     self.device_id, port.number, port.ifname)
            self._carrier_changed(port)

    def _carrier_changed(self, port: Port) -> None:
        for listener in self.carrier_listeners:
            try:
                listener(port)
            except Exception:  # an observer must not stop the netlink watcher
                log.exception("event=carrier_listener_failed device=%d port=%d", self.device_id, port.number)

    # -- sockets ----------------------------------------------------------------------------

    def _attach(self, port: Port, ifindex: int) -> None:
        assert self._loop is not None
        control: list[socket.socket] = []
        try:
            sock = open_packet_socket(port.ifname, ifindex)
            for ethertype in CONTROL_ETHERTYPES:
                control.append(open_packet_socket(port.ifname, ifindex, ethertype, timestamps=True))
        except OSError as err:
            for opened in control:
                opened.close()
            log.error("event=port_open_failed device=%d port=%d ifname=%s error=%s",
                      self.device_id, port.number, port.ifname, err)
            return
        port.sock = sock
        port.control_socks = control
        port.ifindex = ifindex
        self._loop.add_reader(sock.fileno(), self._drain, port, sock)
        for ctl_sock in control:
            self._loop.add_reader(ctl_sock.fileno(), self._drain_control)
        log.info("event=port_attached device=%d port=%d ifname=%s ifindex=%d",
                 self.device_id, port.number, port.ifname, ifindex)
        self._carrier_changed(port)  # NOT_PRESENT -> DOWN, before any carrier news

    def _detach(self, port: Port) -> None:
        sock = port.sock
        if port.up:
            port.up = False
            log.info("event=port_down device=%d port=%d ifname=%s", self.device_id, port.number, port.ifname)
        if sock is None:
            return
        port.sock = None
        port.ifindex = 0
        control, port.control_socks = port.control_socks, []
        for closing in (sock, *control):
            if self._loop is not None:
                self._loop.remove_reader(closing.fileno())
            closing.close()
        self._carrier_changed(port)

    def _drain(self, port: Port, sock: socket.socket) -> None:
        """Read up to RX_BUDGET frames of a port's data socket into the pipeline. It sees control
        frames too and leaves them to their own sockets."""
        if port.sock is None:
            return
        handle = self.on_frame
        control_types = _CONTROL_TYPES
        recvmsg = sock.recvmsg
        accept = self._accept
        for _ in range(RX_BUDGET):
            try:
                frame, ancillary, flags, _addr = recvmsg(RX_BUFFER, _ANCILLARY_SPACE)
            except BlockingIOError:
                return
            except OSError as err:
                self._receive_failed(port, err)
                return
            if frame[12:14] in control_types:
                continue
            taken = accept(port, frame, ancillary, flags)
            if taken is not None:
                self._handle(handle, port, *taken)

    def _drain_control(self) -> None:
        """Every port's control frames at once (any control socket readable), handled in the
        order they reached the switch by their receive time stamps, across ports: a switch
        whose loop fell behind passes its backlog of probes on in arrival order, not port by
        port, so that a probe the controller has read vouches for every one that arrived before
        it (controller/heal/link_monitor.py).

        The sockets are read one after another, so a frame can reach a socket already read while
        a later one is being read (the process preempted or stopped between the two, or a port
        with more than RX_BUDGET waiting): handled now, the later socket's newer frames would
        overtake it, and the controller would count it lost. Only frames stamped before the
        read began, and before the last one read of a socket left unfinished, are handled; the
        rest wait for the next round, which comes at once."""
        if self._drain_again is not None:
            self._drain_again.cancel()
            self._drain_again = None
        # the kernel stamps CLOCK_REALTIME; the controller's probes carry CLOCK_MONOTONIC
        realtime_ahead = time.time_ns() - time.monotonic_ns()
        vouched = time.monotonic_ns()
        taken, self._held = self._held, []
        unfinished = False
        for port in self.by_number.values():
            if port.sock is None:
                continue
            for sock in port.control_socks:
                arrived = 0
                for _ in range(RX_BUDGET):
                    try:
                        frame, ancillary, flags, _addr = sock.recvmsg(RX_BUFFER, _CONTROL_ANCILLARY_SPACE)
                    except BlockingIOError:
                        break
                    except OSError as err:
                        self._receive_failed(port, err)
                        break
                    arrived, ancillary = self._arrival(ancillary, realtime_ahead)
                    one = self._accept(port, frame, ancillary, flags)
                    if one is not None:
                        taken.append((arrived, port, *one))
                else:
                    vouched = min(vouched, arrived)
                    unfinished = True
        taken.sort(key=lambda t: t[0])
        handle = self.on_frame
        for i, (arrived, port, frame, tci) in enumerate(taken):
            if arrived > vouched:
                self._held = taken[i:]
                break
            if port.sock is None:
                continue  # detached while its frame waited
            port.arrived_ns = arrived
            self._handle(handle, port, frame, tci)
            port.arrived_ns = 0
        if (self._held or unfinished) and self._loop is not None:
            self._drain_again = self._loop.call_soon(self._drain_control)

    def _receive_failed(self, port: Port, err: OSError) -> None:
        # The interface went away or down under the socket; netlink tells the rest.
        if err.errno != errno.ENETDOWN:
            log.warning("event=receive_failed device=%d port=%d ifname=%s error=%s",
                        self.device_id, port.number, port.ifname, err)

    def _accept(self, port: Port, frame: bytes, ancillary: list[tuple[int, int, bytes]], flags: int) -> tuple[bytes, int] | None:
        """A received frame counted, and with its 802.1Q tag as the pipeline takes it: (frame,
        tci or -1); None for one that was truncated."""
        port.rx += 1
        port.rx_bytes += len(frame)
        if flags & MSG_TRUNC:
            port.drops += 1
            self._oversized(port)
            return None
        tci = -1
        if ancillary:
            status, _l, _s, _m, _n, vlan_tci, vlan_tpid = _AUXDATA.unpack(ancillary[0][2])
            if status & TP_STATUS_VLAN_VALID:
                port.rx_bytes += 4
                if status & TP_STATUS_VLAN_TPID_VALID and vlan_tpid != ETH_P_8021Q:
                    frame = frame[:12] + _TAG.pack(vlan_tpid, vlan_tci) + frame[12:]
                else:
                    tci = vlan_tci
        return frame, tci

    def _handle(self, handle: FrameHandler, port: Port, frame: bytes, tci: int) -> None:
        try:
            handle(port, frame, tci)
        except Exception:
            # One malformed frame or bad entry must not stop the port.
            port.drops += 1
            self._errors += 1
            if self._errors & (self._errors - 1) == 0:  # 1st, 2nd, 4th, ...: no log flood
                log.exception("event=pipeline_error device=%d port=%d errors=%d",
                              self.device_id, port.number, self._errors)

    @staticmethod
    def _arrival(ancillary: list[tuple[int, int, bytes]], realtime_ahead: int) -> tuple[int, list[tuple[int, int, bytes]]]:
        """(CLOCK_MONOTONIC ns of the receive time stamp, 0 if none; the rest: PACKET_AUXDATA)."""
        arrived = 0
        rest = []
        for item in ancillary:
            if item[0] == socket.SOL_SOCKET and item[1] == SO_TIMESTAMPNS:
                sec, nsec = _TIMESPEC.unpack_from(item[2])
                arrived = sec * 1_000_000_000 + nsec - realtime_ahead
            else:
                rest.append(item)
        return arrived, rest

    def _oversized(self, port: Port) -> None:
        self._oversized_frames += 1
        if self._oversized_frames & (self._oversized_frames - 1) == 0:
            # Typically GSO: a host interface with TSO/GSO on hands the veth 64 KiB "frames".
            log.warning("event=oversized_frame device=%d port=%d ifname=%s limit=%d count=%d "
                        "hint=disable_tso_gso_on_the_peer", self.device_id, port.number, port.ifname,
                        RX_BUFFER, self._oversized_frames)
