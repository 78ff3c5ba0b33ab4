"""Link state from two sources: the probes' verdicts (link_monitor.py) and the switches' port
state over gNMI (controller/gnmi/). This module decides what the fabric is told.

- A port whose oper-status goes DOWN takes its link down at once. On a probed link the link
  monitor is told too, so that the link comes back only once probes cross it again
  (`probe_recovery` checks, doubled on a flap): probes decide when it is used again.
- A port that comes UP on a link that is not probed (a target without packet I/O, or
  `probe_interval` 0) brings the link back after `gnmi_up_hold_down` seconds of UP at both
  ends; a DOWN within that time starts the wait again.
- A switch whose gNMI stream broke has its links unknown, not up, until a new stream syncs:
  the fabric places no new path over them, and tears nothing down for that alone. Before the
  first sync the links are as the topology says, as the link monitor takes them: a target that
  never answers gNMI loses its port state, not its paths.

A silent cut (carrier up at both ends, frames lost) shows in no port state: on a link without
probes nothing sees it.
"""

from __future__ import annotations

import asyncio
import logging

from controller.fabric.connections import Fabric
from controller.fabric.graph import Link
from controller.heal.link_monitor import LinkMonitor
from controller.settings import Settings

log = logging.getLogger("p4nsm.heal.ports")


class PortStateJudge:
    def __init__(self, fabric: Fabric, links: LinkMonitor, settings: Settings) -> None:
        self.fabric = fabric
        self.links = links
        self.settings = settings
        self.probe_up: dict[str, bool] = {name: True for name in fabric.graph.links}
        self.port_down: set[tuple[str, int]] = set()
        # Switches whose gNMI stream broke and has not synced again.
        self.unknown: set[str] = set()
        self._holds: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def stop(self) -> None:
        for hold in self._holds.values():
            hold.cancel()
        self._holds.clear()
        for task in self._tasks:
            task.cancel()

    def probed(self, link: str) -> bool:
        return link in self.links.links

    def known(self, switch: str) -> bool:
        return switch not in self.unknown

    # --- inputs ------------------------------------------------------------------------------

    def restore(self, down: list[str]) -> None:
        """The probes' verdicts a restarted controller starts from (LinkMonitor.down_links)."""
        for name in down:
            self.probe_up[name] = False
            self._apply(name)

    async def on_probe_verdict(self, link: Link, up: bool) -> None:
        """The link monitor's verdict (its on_change)."""
        self.probe_up[link.name] = up
        self._apply(link.name)

    def on_port(self, switch: str, port: int, up: bool) -> None:
        """A gNMI oper-status report (PortStateClient's port listener)."""
        link = self.fabric.graph.port_link.get((switch, port))
        if link is None:
            return  # an edge port: a host's attachment is not a fabric link
        if not up:
            self.port_down.add((switch, port))
            self._cancel_hold(link.name)
            if self.probed(link.name):
                # The monitor's own verdict falls too, so that probes decide the return.
                self._spawn(self.links.mark_down(link.name, f"gNMI oper-status DOWN at {switch}:{port}"))
            log.warning("link=%s switch=%s port=%d event=port_down source=gnmi", link.name, switch, port)
            self._apply(link.name)
            return
        if (switch, port) not in self.port_down:
            return
        self.port_down.discard((switch, port))
        log.info("link=%s switch=%s port=%d event=port_up source=gnmi probed=%s", link.name, switch, port,
                 self.probed(link.name))
        if self.probed(link.name):
            self._apply(link.name)  # still down until the probes' recovery says otherwise
        else:
            self._start_hold(link)

    def on_known(self, switch: str, known: bool) -> None:
        """A switch's gNMI view became valid (sync) or was lost (PortStateClient's known listener)."""
        # A port already down stays down while the state is unknown: the next sync reports every
        # port again, and only an UP there brings its link back.
        (self.unknown.discard if known else self.unknown.add)(switch)
        for link in self.fabric.graph.links.values():
            if switch in (link.a, link.b):
                self._apply_known(link.name)

    # --- verdict -----------------------------------------------------------------------------

    def _ends_down(self, link: Link) -> bool:
        return (link.a, link.a_port) in self.port_down or (link.b, link.b_port) in self.port_down

    def _apply(self, name: str) -> None:
        link = self.fabric.graph.links[name]
        up = self.probe_up.get(name, True) and not self._ends_down(link) and name not in self._holds
        self.fabric.set_link(name, up)

    def _apply_known(self, name: str) -> None:
        link = self.fabric.graph.links[name]
        self.fabric.set_link_known(name, self.known(link.a) and self.known(link.b))

    def _start_hold(self, link: Link) -> None:
        self._cancel_hold(link.name)
        if self._ends_down(link):
            return
        delay = self.settings.gnmi_up_hold_down

        def release() -> None:
            self._holds.pop(link.name, None)
            log.info("link=%s event=up source=gnmi hold_down_s=%.3f", link.name, delay)
            self._apply(link.name)

        self._holds[link.name] = asyncio.get_running_loop().call_later(delay, release)
        self._apply(link.name)

    def _cancel_hold(self, name: str) -> None:
        hold = self._holds.pop(name, None)
        if hold is not None:
            hold.cancel()

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
