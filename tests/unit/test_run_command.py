"""`p4nsm run` as a user starts it: SIGTERM stops it in order, like Ctrl-C, and a store written
by a newer controller is refused at start with both versions named."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from controller.fabric.store import SCHEMA_VERSION

P4NSM = Path(sys.executable).with_name("p4nsm")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _topology(tmp_path: Path) -> Path:
    # One switch nobody serves: the controller keeps dialling it, which is all this test needs.
    path = tmp_path / "one.yaml"
    path.write_text(f"""name: one
switches:
  - name: s1
    device_id: 1
    grpc_addr: 127.0.0.1:{_free_port()}
    target: softswitch
    ports: [1]
links: []
hosts:
  - name: h1
    attach: s1:1
""")
    return path


def _command(tmp_path: Path) -> list[str]:
    return [str(P4NSM), "run", "-t", str(_topology(tmp_path)), "--nsm-address", f"unix://{tmp_path}/nsm.sock",
            "--set", f"store_path={tmp_path}/store.sqlite", "--set", "metrics_address=127.0.0.1:0",
            "--set", "web_address=127.0.0.1:0", "--set", "plaintext=true"]


def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"no {needle!r} within {timeout}s; got:\n{''.join(seen[-20:])}")


def test_sigterm_stops_run_in_order(tmp_path):
    proc = subprocess.Popen(_command(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_for_line(proc, "event=nsm_listening", 60)
        proc.send_signal(signal.SIGTERM)
        _wait_for_line(proc, "event=stopped", 60)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_refuses_a_store_from_a_newer_controller(tmp_path):
    db = sqlite3.connect(tmp_path / "store.sqlite")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    done = subprocess.run(_command(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    out = " ".join((done.stdout + done.stderr).split())
    assert f"schema version {SCHEMA_VERSION + 1}" in out and f"this controller's {SCHEMA_VERSION}" in out
