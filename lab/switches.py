"""A Mininet switch whose datapath is a P4Runtime target process: `p4nsm-softswitch`, or BMv2's
`simple_switch_grpc`. It lives in the root netns, like Mininet's OVS switches, so the controller
reaches its gRPC address on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mininet.node import Switch as MininetSwitch

# Importing mininet makes every logger created afterwards, in any module of the process, a
# MininetLogger at level OUTPUT with a handler of its own; put the standard class back.
logging.setLoggerClass(logging.Logger)

from controller.topology import Switch, Target  # noqa: E402

log = logging.getLogger("p4nsm.lab")

SOFTSWITCH_COMMAND = "p4nsm-softswitch"
BMV2_COMMAND = "simple_switch_grpc"
BMV2_THRIFT_BASE_PORT = 9090  # plus the switch's index: several BMv2 switches must not share one
SWITCH_STOP_TIMEOUT_S = 5.0
# A switch is a machine of its own where p4nsm is deployed; in the lab it shares the CPUs with the
# controller and the tests. A controller starting (a core busy for a second or two) starved BMv2's
# egress threads past their 64-frame queues and dropped data frames that no write had touched.
# The switches run ahead of the rest: niceness is inherited by every thread they start. Each
# switch has a session of its own, and with the kernel's autogroup scheduling
# (/proc/sys/kernel/sched_autogroup_enabled) niceness orders threads only within a session, while
# sessions share the CPUs equally: the session's own niceness (/proc/PID/autogroup) is set as well.
SWITCH_NICE = -10


def _prioritize_session(pid: int, name: str) -> None:
    """Give the session led by `pid` SWITCH_NICE as its autogroup's niceness (see SWITCH_NICE)."""
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(SWITCH_NICE))
    except FileNotFoundError:
        pass  # a kernel without autogroup scheduling: the process's niceness alone counts
    except OSError as e:
        log.warning("switch=%s event=session_priority_refused pid=%d error=%s", name, pid, e)


class LabError(RuntimeError):
    """The lab cannot start or act as asked; the message says what to do about it."""


def as_target(kind: Target | str) -> Target:
    """`kind` as a Target: a topology copied with `model_copy(update=...)` may hold the plain string."""
    try:
        return Target(kind)
    except ValueError:
        raise LabError(f"unknown switch kind {kind!r}; use 'softswitch' or 'bmv2'") from None


def find_command(kind: Target | str) -> str:
    """The executable for a switch kind, or LabError saying what is missing."""
    kind = as_target(kind)
    if kind is Target.SOFTSWITCH:
        found = shutil.which(SOFTSWITCH_COMMAND)
        beside_python = Path(sys.executable).with_name(SOFTSWITCH_COMMAND)
        if found is None and beside_python.exists():
            found = str(beside_python)  # the venv's script when the venv is not on PATH
        if found is None:
            raise LabError(f"{SOFTSWITCH_COMMAND} is not installed: run `pip install -e .` in the repo's venv")
        return found
    if kind is Target.BMV2:
        found = shutil.which(BMV2_COMMAND)
        if found is None:
            raise LabError(f"target bmv2 needs {BMV2_COMMAND} on PATH, and it is not there; "
                           "install BMv2 or run the lab with switch_kind='softswitch'")
        return found
    raise LabError(f"target {kind} cannot run in the lab (it is hardware); use switch_kind='softswitch' or 'bmv2'")


@dataclasses.dataclass(frozen=True)
class SwitchTls:
    """A lab switch's mutual TLS: its certificate and key, the CA its clients' certificates must
    chain to, and the client identities it lets arbitrate and write (softswitch only: BMv2 trusts
    every certificate the CA signed)."""

    cert: Path
    key: Path
    ca: Path
    allow: tuple[str, ...]

    def options(self, kind: Target) -> list[str]:
        """simple_switch_grpc's TLS options, which the softswitch shares, and its allow-list."""
        out = ["--grpc-server-ssl", "--grpc-server-cert", str(self.cert), "--grpc-server-key", str(self.key),
               "--grpc-server-with-client-auth", "--grpc-server-cacert", str(self.ca)]
        if kind is Target.SOFTSWITCH:
            out += [arg for identity in self.allow for arg in ("--grpc-server-allow", identity)]
        return out


def switch_argv(spec: Switch, kind: Target | str, ifnames: dict[int, str], index: int,
                tls: SwitchTls | None = None) -> list[str]:
    """The command line that starts switch `spec` on the given port interfaces; with `tls`, it
    serves mutual TLS only."""
    kind = as_target(kind)
    command = find_command(kind)
    ports = [arg for port in sorted(ifnames) for arg in ("-i", f"{port}@{ifnames[port]}")]
    secure = tls.options(kind) if tls is not None else []
    if kind is Target.SOFTSWITCH:
        return [command, *ports, "--device-id", str(spec.device_id), "--grpc-server-addr", spec.grpc_addr,
                "--cpu-port", str(spec.cpu_port), *secure]
    # A BMv2 built without Thrift refuses --thrift-port; one built with it needs a port per switch.
    thrift = ["--thrift-port", str(bmv2_thrift_port(index))] if bmv2_offers_thrift(command) else []
    return [command, "--no-p4", *ports, "--device-id", str(spec.device_id), *thrift,
            *bmv2_log_options(), "--", "--grpc-server-addr", spec.grpc_addr, "--cpu-port", str(spec.cpu_port), *secure]


@functools.cache
def bmv2_offers_thrift(command: str) -> bool:
    """Whether this simple_switch_grpc takes --thrift-port: asked of its --help once per binary."""
    try:
        probe = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{command} --help failed: {exc}") from None
    return "--thrift-port" in probe.stdout + probe.stderr


def bmv2_log_options() -> list[str]:
    """BMv2's own log in the switch's log file when P4NSM_BMV2_LOG names a level (debug, info,
    trace...): with --log-console it writes every table hit and packet-in to stdout."""
    level = os.environ.get("P4NSM_BMV2_LOG", "")
    return ["--log-console", "-L", level] if level else []


def bmv2_thrift_port(index: int) -> int:
    return BMV2_THRIFT_BASE_PORT + index


def accepts_connections(host: str, port: int, timeout: float = 0.2) -> bool:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class FabricSwitch(MininetSwitch):
    """Mininet calls start() and stop(); the lab also uses launch() and halt() to kill and restart
    a switch without touching its interfaces."""

    def __init__(self, name: str, spec: Switch, argv: list[str], log_path: Path, **params: Any) -> None:
        self.spec = spec
        self.argv = argv
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        super().__init__(name, dpid=format(spec.device_id, "x"), **{**params, "inNamespace": False})

    def start(self, controllers: list[Any]) -> None:
        self.launch()

    def stop(self, deleteIntfs: bool = True) -> None:
        self.halt()
        super().stop(deleteIntfs)

    def launch(self) -> int:
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.argv)}\n".encode())
            log_file.flush()
            # Own session: a Ctrl-C meant for the lab does not reach the switch, and halt() can
            # signal the switch with anything it started.
            self.proc = subprocess.Popen(
                ["nice", "-n", str(SWITCH_NICE), *self.argv], stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        _prioritize_session(self.proc.pid, self.name)
        log.info("switch launched switch=%s pid=%d grpc=%s", self.name, self.proc.pid, self.spec.grpc_addr)
        return self.proc.pid

    @property
    def datapath_pid(self) -> int | None:
        """The switch process's pid while it runs (Mininet's `pid` is the node's shell)."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def listening(self) -> bool:
        return accepts_connections(self.spec.grpc_host, self.spec.grpc_port)

    def request_stop(self) -> None:
        """SIGTERM without waiting, so that many switches wind down at once before halt()."""
        if self.proc is not None and self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)

    def halt(self, timeout: float = SWITCH_STOP_TIMEOUT_S) -> None:
        """Stop the switch process and anything it started; idempotent."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("switch ignored SIGTERM switch=%s pid=%d; killing it", self.name, proc.pid)
        _signal_group(proc.pid, signal.SIGKILL)  # also children that outlived the leader
        proc.wait()
        log.info("switch stopped switch=%s pid=%d status=%s", self.name, proc.pid, proc.returncode)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
