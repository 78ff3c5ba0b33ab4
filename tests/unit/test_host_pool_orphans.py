"""A controller killed (SIGKILL) leaves no host-pool worker behind, even one that was still
starting up when its parent died: the parent-death signal only covers a worker that had set it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The parent dies while its first worker is being spawned, before the worker's initializer ran.
DIES_WHILE_SPAWNING = """
import asyncio, os, signal
from controller.nsm.elements.host_pool import HostPool

async def main():
    pool = HostPool(1)
    asyncio.ensure_future(pool.warm())
    await asyncio.sleep(0)
    os.kill(os.getpid(), signal.SIGKILL)

if __name__ == "__main__":
    asyncio.run(main())
"""


def _marked(marker: str) -> list[int]:
    """Processes whose environment carries `marker`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                out.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return out


def test_a_worker_whose_parent_died_while_it_started_exits(tmp_path: Path) -> None:
    marker = f"P4NSM_TEST_MARK={uuid.uuid4().hex}"
    script = tmp_path / "dies.py"
    script.write_text(DIES_WHILE_SPAWNING)
    env = {**os.environ, "PYTHONPATH": str(REPO), marker.split("=")[0]: marker.split("=")[1]}
    errors = tmp_path / "stderr"
    with errors.open("wb") as err:  # a file: a pipe would stay open as long as a leftover worker holds it
        done = subprocess.run([sys.executable, str(script)], env=env, cwd=REPO, timeout=60,
                              stdout=subprocess.DEVNULL, stderr=err)
    assert done.returncode == -9, errors.read_text()[-2000:]
    deadline = time.monotonic() + 20
    while left := _marked(marker):
        if time.monotonic() > deadline:
            for pid in left:  # what this test started
                os.kill(pid, 9)
            raise AssertionError(f"host-pool workers outlived their killed parent: pids {left}")
        time.sleep(0.1)
