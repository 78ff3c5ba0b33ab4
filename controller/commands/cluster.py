"""`p4nsm cluster`: every replica's part (from its admin socket), which one leads, its term and
election id, and per switch who is primary: the replica whose election id the switch itself
last named in arbitration (each replica's client hears it on its own stream)."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controller.admin import call
from controller.replication import term_of

Status = dict[str, Any]


def admin_sockets(run_dir: Path, given: Sequence[Path]) -> list[Path]:
    """The sockets named, else every admin socket in the run directory (admin.sock, admin-*.sock)."""
    return list(given) or sorted(Path(p) for p in glob.glob(str(run_dir / "admin*.sock")))


async def gather(sockets: Sequence[Path]) -> list[tuple[Path, Status | str]]:
    """Each socket's replica status, or why it gave none."""
    out: list[tuple[Path, Status | str]] = []
    for path in sockets:
        try:
            out.append((path, await call(path, "replica")))
        except (OSError, RuntimeError) as e:
            out.append((path, f"unreachable: {e}"))
    return out


def replica_rows(found: Sequence[tuple[Path, Status | str]]) -> list[dict[str, str]]:
    rows = []
    for path, st in found:
        if isinstance(st, str):
            rows.append({"replica": "?", "admin socket": str(path), "role": st})
            continue
        rows.append({"replica": st["replica_id"] or "(sole)", "admin socket": str(path), "role": st["role"],
                     "term": str(st["term"]), "election id": f"{st['election_id']:#x}", "nsm address": st["nsm_address"],
                     "leader it sees": st["leader"] or ("itself" if st["role"] == "leader" else "none")})
    return rows


def switch_rows(found: Sequence[tuple[Path, Status | str]]) -> list[dict[str, str]]:
    """Per switch: the election id its primary holds (the highest any replica heard), whose it is,
    and each replica's own view of that switch."""
    statuses = [st for _, st in found if not isinstance(st, str)]
    by_id = {st["election_id"]: st["replica_id"] or "(sole)" for st in statuses}
    names = list(dict.fromkeys(sw["name"] for st in statuses for sw in st["switches"]))
    rows = []
    for name in names:
        views = {st["replica_id"] or "(sole)": sw for st in statuses for sw in st["switches"] if sw["name"] == name}
        primary_id = max((sw["primary_election_id"] for sw in views.values()), default=0)
        holders = [r for r, sw in views.items() if sw["primary"]]
        who = by_id.get(primary_id) or (holders[0] if holders else "unknown")
        rows.append({"switch": name, "primary": who, "primary election id": f"{primary_id:#x}",
                     "term": str(term_of(primary_id)),
                     **{f"{r}": ("primary" if sw["primary"] else "backup") + (f", {sw['refused_writes']} refused"
                                                                          if sw["refused_writes"] else "")
                        for r, sw in views.items()}})
    return rows
