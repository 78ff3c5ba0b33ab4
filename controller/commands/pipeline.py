"""`p4nsm pipeline apply|revisions|delete`: pipeline revisions of the running controller."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()
SocketOpt = Annotated[Path, typer.Option("--admin-socket", help="The running controller's admin socket")]


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def show_revisions(revs: list[dict[str, Any]]) -> None:
    """Each revision with its state, history and every switch's answers (the operator's view)."""
    table = Table(title="pipeline revisions")
    for column in ("#", "revision", "state", "asked by", "history", "answers"):
        table.add_column(column)
    for rev in revs:
        history = "\n".join(f"{_when(e['at'])} {e['state']}" + (f": {e['note']}" if e["note"] else "") for e in rev["history"])
        answers = "\n".join(f"{a['switch']} {a['step']}: " + ("ok" if a["ok"] else f"{a['code']} {a['message']}")
                            for a in rev["answers"])
        table.add_row(str(rev["number"]), rev["id"], rev["state"], f"{rev['asked_by']}\n{_when(rev['asked_at'])}",
                      history, answers)
    console.print(table)


def pipeline_app(admin_socket: Path) -> typer.Typer:
    """The command group, talking to the controller behind `admin_socket`."""
    app = typer.Typer(help="Pipeline revisions: publish a P4 program to the fabric, list and delete revisions",
                      no_args_is_help=True)

    def call(socket: Path, op: str, **args: Any) -> Any:
        from controller.admin import call as admin_call

        try:
            return asyncio.run(admin_call(socket, op, **args))
        except RuntimeError as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(1) from None

    @app.command()
    def apply(
        p4info: Annotated[Path, typer.Option("--p4info", help="P4Info of the program (text format)")],
        config: Annotated[Optional[list[str]], typer.Option("--config", help="TARGET=FILE: the device config for "
                                                            "switches of that target kind (softswitch, bmv2, tofino, dpdk)")] = None,
        admin: SocketOpt = admin_socket,
    ) -> None:
        """Publish a revision and roll it out; prints the revision and its outcome (exit 1 unless in sync)."""
        configs: dict[str, str] = {}
        for item in config or []:
            kind, sep, path = item.partition("=")
            if not sep or not kind or not path:
                raise typer.BadParameter(f"--config {item!r}: expected TARGET=FILE")
            try:
                configs[kind] = base64.b64encode(Path(path).read_bytes()).decode()
            except OSError as e:
                raise typer.BadParameter(f"--config {kind}: {e}") from None
        try:
            text = p4info.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise typer.BadParameter(f"--p4info: {e}") from None
        rev = call(admin, "pipeline_apply", p4info=text, configs=configs)
        show_revisions([rev])
        took = f" in {rev['seconds']} s" if "seconds" in rev else ""
        console.print(f"revision {rev['number']} {rev['id']}: {rev['state']}{took}")
        if rev["state"] != "in_sync":
            raise typer.Exit(1)

    @app.command()
    def revisions(admin: SocketOpt = admin_socket) -> None:
        """List the revisions with their state, history and each switch's answers."""
        show_revisions(call(admin, "pipeline_revisions"))

    @app.command()
    def delete(revision: Annotated[str, typer.Argument(help="Revision id, a unique prefix of it, or its number")],
               admin: SocketOpt = admin_socket) -> None:
        """Delete a revision (the only way to clear a taint); the one in use cannot be deleted."""
        done = call(admin, "pipeline_delete", revision=revision)
        console.print(f"deleted revision {done['number']} {done['deleted']} ({done['state']})")

    return app
