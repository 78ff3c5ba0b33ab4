"""pytest fixtures that run a real softswitch process and connect the test client to it.

Import them into a suite's conftest.py: `from tests.support.fixtures import *  # noqa: F403`.
`start_softswitch(...)` is usable directly by e2e tests that need interfaces.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from finsy.proto import p4r, p4r_grpc

from tests.support.p4rt import REPO, P4RTTestClient

SOFTSWITCH_BIN = REPO / ".venv" / "bin" / "p4nsm-softswitch"
STARTUP_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SoftSwitchProcess:
    """A running `p4nsm-softswitch`; `.log_path` holds its stdout/stderr."""

    def __init__(self, process: subprocess.Popen, address: str, device_id: int, log_path: Path) -> None:
        self.process = process
        self.address = address
        self.device_id = device_id
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def softswitch_command(
    address: str, device_id: int, cpu_port: int, interfaces: Sequence[str], extra_args: Sequence[str]
) -> list[str]:
    """interfaces: "PORT@IFNAME" strings, as simple_switch_grpc takes them."""
    cmd = [str(SOFTSWITCH_BIN)]
    for iface in interfaces:
        cmd += ["-i", iface]
    return cmd + [
        "--device-id",
        str(device_id),
        "--grpc-server-addr",
        address,
        "--cpu-port",
        str(cpu_port),
        *extra_args,
    ]


def wait_for_grpc(
    address: str, timeout: float, process: subprocess.Popen | None = None,
    channel: Callable[[str], grpc.Channel] = grpc.insecure_channel,
) -> None:
    """Until Capabilities answers (the server is serving, not just listening); `channel` makes
    the channel (a TLS one for a switch serving TLS: tests/support/tls.py)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"softswitch exited with {process.returncode} before serving on {address}")
        with channel(address) as opened:
            try:
                p4r_grpc.P4RuntimeStub(opened).Capabilities(p4r.CapabilitiesRequest(), timeout=0.5)
                return
            except grpc.RpcError as err:
                last = err
        time.sleep(0.05)
    raise TimeoutError(f"softswitch at {address} did not answer within {timeout}s: {last}")


@contextlib.contextmanager
def start_softswitch(
    device_id: int = 1,
    cpu_port: int = 255,
    interfaces: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    address: str | None = None,
    env: dict[str, str] | None = None,
    command_prefix: Sequence[str] = (),
    channel: Callable[[str], grpc.Channel] = grpc.insecure_channel,
    command: Sequence[str] = (),
) -> Iterator[SoftSwitchProcess]:
    """Run a softswitch subprocess on a free loopback port until the block ends.

    interfaces: "PORT@IFNAME" strings; command_prefix: e.g. ("ip", "netns", "exec", NS) to run
    it inside a network namespace (the address must then be reachable from here). command: another
    P4Runtime server's whole command line instead (e.g. the lab's simple_switch_grpc one), which
    must serve on `address`: it gets the same start-up wait, log file and stop.
    """
    address = address or f"127.0.0.1:{free_port()}"
    log_fd, log_name = tempfile.mkstemp(prefix=f"softswitch-{device_id}-", suffix=".log")
    own = command or softswitch_command(address, device_id, cpu_port, interfaces, extra_args)
    cmd = [*command_prefix, *own]
    process = subprocess.Popen(
        cmd, cwd=REPO, stdout=log_fd, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    os.close(log_fd)
    running = SoftSwitchProcess(process, address, device_id, Path(log_name))
    try:
        try:
            wait_for_grpc(address, STARTUP_TIMEOUT, process, channel)
        except Exception as err:
            raise RuntimeError(f"{err}\n--- softswitch log ---\n{running.log()}") from err
        yield running
    finally:
        running.stop()
        with contextlib.suppress(OSError):
            os.unlink(log_name)


@pytest.fixture
def softswitch() -> Iterator[SoftSwitchProcess]:
    """A fresh softswitch (device 1, no interfaces, no pipeline)."""
    with start_softswitch() as running:
        yield running


@pytest.fixture
def p4rt(softswitch: SoftSwitchProcess) -> Iterator[P4RTTestClient]:
    """The primary client (election id 10) with the nsm_fabric pipeline committed."""
    client = P4RTTestClient(softswitch.address, device_id=softswitch.device_id, election_id=10)
    try:
        client.set_pipeline()
        yield client
    finally:
        client.close()
