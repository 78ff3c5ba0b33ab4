"""A local admin socket so that `p4nsm connect/disconnect` reach the running controller.

JSON lines over a unix socket (root-only by file mode): one request, one reply. It exists
for direct host-to-host connections and inspection; applications use the NSM API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("p4nsm.admin")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
# One request line; a pipeline revision brings its P4Info and device configs (BMv2's JSON is
# hundreds of kilobytes, a Tofino pipeline megabytes).
REQUEST_MAX = 64 * 1024 * 1024


def caller(writer: asyncio.StreamWriter) -> str:
    """Who is on the other end of the socket, by the kernel's word (SO_PEERCRED), not the client's."""
    sock = writer.get_extra_info("socket")
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except (OSError, AttributeError):
        return "unknown"
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


class AdminServer:
    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=REQUEST_MAX)
        os.chmod(self.path, 0o600)
        log.info("event=admin_listening path=%s", self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            request = json.loads(line or b"{}")
            if not isinstance(request, dict):
                raise ValueError("a request is one JSON object")
            request["caller"] = caller(writer)
            handler = self.handlers.get(request.get("op", ""))
            if handler is None:
                reply: dict[str, Any] = {"ok": False, "error": f"op: unknown operation {request.get('op')!r}"}
            else:
                try:
                    reply = {"ok": True, "result": await handler(request)}
                except Exception as e:  # the error goes back to the CLI user, named
                    reply = {"ok": False, "error": str(e)}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ValueError, ConnectionError) as e:
            log.warning("event=admin_bad_request error=%s", e)
        finally:
            writer.close()


async def call(path: Path, op: str, **args: Any) -> Any:
    """Send one request to a running controller; raises RuntimeError with its error text."""
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=REQUEST_MAX)
    except (FileNotFoundError, ConnectionRefusedError):
        raise RuntimeError(f"no controller is running (admin socket {path} not found); start one with `p4nsm run` or `p4nsm lab`") from None
    writer.write(json.dumps({"op": op, **args}).encode() + b"\n")
    await writer.drain()
    reply = json.loads(await reader.readline())
    writer.close()
    if not reply.get("ok"):
        raise RuntimeError(reply.get("error", "failed"))
    return reply.get("result")
