"""`p4nsm lab`: Mininet lab + controller + the Mininet CLI with p4nsm commands.

Mininet's CLI blocks its thread, so the controller's event loop runs in a second thread here
(the one place where a library forces a thread); CLI commands hop onto that loop.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from controller.aio import freeze_startup_heap
from controller.identity import load_svid
from controller.runtime import Controller
from controller.settings import Settings
from controller.topology import Topology
from lab.certs import as_role, lab_tls


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="p4nsm-controller", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float | None = 60) -> Any:
        fut: Future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _cli_class(ctl: Controller, runner: _LoopThread):
    from mininet.cli import CLI

    class P4nsmCLI(CLI):
        prompt = "p4nsm> "

        def _show(self, value: Any) -> None:
            self.stdout.write(json.dumps(value, indent=2, default=str) + "\n")

        def _guard(self, coro: Any) -> None:
            try:
                self._show(runner.run(coro))
            except Exception as e:  # show the controller's error, keep the CLI alive
                self.stdout.write(f"error: {e}\n")

        def do_connect(self, line: str) -> None:
            """connect HOST_A HOST_B: a direct connection with VLAN interfaces on both hosts."""
            args = line.split()
            if len(args) != 2:
                self.stdout.write("usage: connect HOST_A HOST_B\n")
                return
            self._guard(ctl.connect_hosts(*args))

        def do_disconnect(self, line: str) -> None:
            """disconnect CONNECTION_ID"""
            self._guard(ctl.disconnect(line.strip()))

        def do_connections(self, line: str) -> None:
            """connections: every connection with its path and backup."""
            from controller.runtime import describe

            self._show([describe(p) for p in ctl.fabric.plans.values()])

        def do_entries(self, line: str) -> None:
            """entries SWITCH: the switch's table entries, read from the switch."""
            from controller.commands.inspect import read_entries

            self._guard(read_entries(ctl.topo, ctl.settings, line.strip()))

        def do_switches(self, line: str) -> None:
            """switches: P4Runtime session state of each switch."""
            self._show([{"name": c.name, "up": c.up.is_set(), "primary": c.primary, "sessions": c.sessions} for c in ctl.clients.values()])

    return P4nsmCLI


def run_lab(topo: Topology, settings: Settings, switch_kind: str | None, admin_path: Path) -> None:
    from lab.harness import Lab, cleanup_stale

    cleanup_stale()
    run_dir = Path(tempfile.mkdtemp(prefix="p4nsm-lab-"))
    if "store_path" not in settings.model_fields_set:
        settings = settings.model_copy(update={"store_path": run_dir / "store.sqlite"})
    # TLS on by default: the controller's certificate from a lab CA in the run directory
    settings = as_role(settings, lab_tls(settings, run_dir, topo), "controller")
    svid = load_svid(settings)  # the switches trust it; None: plaintext, switches too
    lab = Lab(topo, run_dir, switch_kind=switch_kind, tls=svid is not None, controller=svid)
    runner: _LoopThread | None = None
    ctl: Controller | None = None
    try:
        lab.start()
        topo = lab.topology  # names the CA of the switches' own certificates
        runner = _LoopThread()
        ctl = Controller(topo, settings, admin_path=admin_path)
        runner.run(ctl.start())
        freeze_startup_heap()  # the lab's controller lives until the lab ends (controller/aio.py)
        ready = runner.run(ctl.wait_ready(60), timeout=90)
        print(f"p4nsm lab {topo.name}: switches {'ready' if ready else 'NOT all ready'}; logs in {run_dir}")
        print("commands: connect h1 h3 | connections | entries s1 | switches | disconnect ID | (all Mininet commands)")
        _cli_class(ctl, runner)(lab.net)
    finally:
        if runner is not None:
            if ctl is not None:
                runner.run(ctl.stop(), timeout=30)
            runner.close()
        lab.stop()
