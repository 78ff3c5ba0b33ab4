"""Reading a compiler's output files for a device config, refusing what is missing or of the wrong kind.

Everything here runs before any RPC: a pipeline push that a switch refuses says less than an
error naming the file (and a wrong file a switch does accept is worse).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from controller.targets.errors import TargetError


def directory(path: Path, what: str) -> Path:
    """`path`, which must be a directory; `what` says whose output it should be."""
    if path.is_dir():
        return path
    if path.exists():
        raise TargetError(f"{path} is a file, not {what}")
    raise TargetError(f"{path} does not exist: it should be {what}")


def require(paths: list[Path], hint: str) -> None:
    """Every path exists; otherwise one error naming all that are missing."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise TargetError(f"missing: {', '.join(missing)} ({hint})")


def _is_bmv2_json(doc: Any) -> bool:
    return isinstance(doc, dict) and "header_types" in doc and "pipelines" in doc


def _json(path: Path) -> tuple[bytes, Any]:
    data = path.read_bytes()
    try:
        return data, json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return data, None


def json_with(path: Path, key: str, what: str) -> bytes:
    """The bytes of a JSON object that has `key` at the top (`what` names the expected file)."""
    data, doc = _json(path)
    if doc is None:
        raise TargetError(f"{path} is not JSON: it should be {what}")
    if _is_bmv2_json(doc):
        raise TargetError(f"{path} is a BMv2 JSON (p4c --target bmv2), not {what}")
    if not isinstance(doc, dict) or key not in doc:
        raise TargetError(f"{path} has no {key!r}: it is not {what}")
    return data


def bmv2_json(path: Path) -> bytes:
    """The bytes of a BMv2 JSON: an object with header_types and pipelines."""
    data = path.read_bytes()
    check_bmv2_json(data, str(path))
    return data


def check_bmv2_json(data: bytes, source: str) -> None:
    """Refuse what is not a BMv2 JSON. simple_switch_grpc does not: its VERIFY accepts any bytes,
    and its commit of them leaves a switch that refuses every later pipeline (seen here)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not _is_bmv2_json(doc):
        raise TargetError(f"{source} is not a BMv2 JSON (no header_types and pipelines): "
                          "build it with `make -C p4 bmv2` (p4c --target bmv2 --arch v1model)")


def not_json(path: Path, what: str) -> bytes:
    """The bytes of a compiled binary or program text, which JSON never is."""
    data, doc = _json(path)
    if doc is not None:
        raise TargetError(f"{path} is JSON, not {what}")
    return data
