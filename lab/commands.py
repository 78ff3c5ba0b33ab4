"""`p4nsm lab` and `p4nsm demo`: the Mininet harness's commands, added to the controller's CLI
through the `p4nsm.commands` entry point group (pyproject.toml)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from controller.commands.cli import (
    ADMIN_SOCKET,
    SetOpt,
    console,
    load_settings,
    load_topo,
)
from controller.logs import setup_logging
from controller.settings import REPO_ROOT


def register(app: typer.Typer) -> None:
    app.command()(lab)
    app.command()(demo)


def lab(
    topology: Annotated[Path, typer.Argument(help="Topology YAML file")],
    switch_kind: Annotated[Optional[str], typer.Option(help="softswitch or bmv2 (default: as in the file)")] = None,
    set: SetOpt = None,
    log_level: str = "WARNING",
) -> None:
    """Bring a topology up in Mininet with the controller, and open the Mininet CLI."""
    from lab.run import run_lab

    setup_logging(log_level)
    run_lab(load_topo(topology), load_settings(set), switch_kind, ADMIN_SOCKET)


def demo(
    topology: Annotated[Path, typer.Option("--topology", "-t")] = REPO_ROOT / "topologies" / "diamond.yaml",
    log_level: str = "WARNING",
) -> None:
    """The lab demo: diamond, one connection, ping across it, its path shown; then clean up."""
    from lab.demo import run_demo

    setup_logging(log_level)
    ok = run_demo(load_topo(topology), console)
    raise typer.Exit(0 if ok else 1)
