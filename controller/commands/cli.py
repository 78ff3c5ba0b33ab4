"""`p4nsm`: run the controller, bring up the lab, run the demo, inspect switches and connections."""

from __future__ import annotations

import asyncio
import signal
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from controller.logs import setup_logging
from controller.settings import REPO_ROOT, Settings

app = typer.Typer(help="p4nsm: Network Service Mesh over a P4Runtime fabric", no_args_is_help=True, add_completion=False)
console = Console()
COMMAND_GROUP = "p4nsm.commands"

RUN_DIR = REPO_ROOT / "run"
ADMIN_SOCKET = RUN_DIR / "admin.sock"
TopologyOpt = Annotated[Path, typer.Option("--topology", "-t", help="Topology YAML file")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting: name=value (see `p4nsm settings`)")]


def load_settings(sets: list[str] | None, certs: Path | None = None) -> Settings:
    """The settings with `--set` overrides; `certs` (a lab's directory) names the controller's
    certificate files, below what `--set` says."""
    from controller.identity import lab_settings

    overrides = lab_settings(certs, "controller") if certs else {}
    for item in sets or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set {item!r}: expected name=value")
        overrides[name] = value
    return Settings.load(overrides)


def load_topo(path: Path):
    from controller.topology import TopologyProblems, load_topology

    try:
        return load_topology(path)
    except (TopologyProblems, OSError) as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None


def show_rows(title: str, rows: list[dict]) -> None:
    table = Table(title=title)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    for k in keys:
        table.add_column(k)
    for r in rows:
        table.add_row(*(str(r.get(k, "")) for k in keys))
    console.print(table)


@app.command()
def run(
    topology: TopologyOpt,
    set: SetOpt = None,
    log_level: str = "INFO",
    nsm_address: Annotated[Optional[str], typer.Option("--nsm-address", help="Serve the NSM API here (default: the nsm_address setting)")] = None,
    certs: Annotated[Optional[Path], typer.Option("--certs", help="A `p4nsm certs init` directory: serve with its controller.crt/.key and ca.crt")] = None,
    admin_socket: Annotated[Path, typer.Option("--admin-socket", help="The admin socket (`p4nsm connect`, `p4nsm cluster`); replicas on one machine need one each, e.g. run/admin-r2.sock")] = ADMIN_SOCKET,
) -> None:
    """Run the controller for a topology until interrupted (mTLS with certificates, or
    `--set plaintext=true`)."""
    from controller.aio import freeze_startup_heap
    from controller.fabric.store import StoreVersionError
    from controller.identity import IdentityError
    from controller.runtime import Controller

    setup_logging(log_level)
    topo = load_topo(topology)
    settings = load_settings(set, certs)

    async def main() -> None:
        # SIGTERM (systemd, kill, a container runtime) stops as Ctrl-C does: the same orderly stop.
        stopping = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
        first = True
        while not stopping.is_set():
            ctl = Controller(topo, settings, admin_path=admin_socket, nsm_address=nsm_address or settings.nsm_address)
            await ctl.start()
            if first:
                # This process is the controller until it stops: its start-up heap is for good.
                freeze_startup_heap()
                first = False
            # A replica whose term ended is built again, as a follower (controller/replication.py).
            ends = [stopping.wait()] + ([ctl.replication.stepped_down.wait()] if ctl.replication is not None else [])
            waits = [asyncio.ensure_future(w) for w in ends]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
                await ctl.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except (IdentityError, StoreVersionError) as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None


@app.command()
def cluster(
    admin_socket: Annotated[Optional[list[Path]], typer.Option("--admin-socket", help="A replica's admin socket (repeat; default: every run/admin*.sock)")] = None,
) -> None:
    """Each replica, which one leads, its term and election id, and per switch who is primary."""
    from controller.commands.cluster import admin_sockets, gather, replica_rows, switch_rows

    sockets = admin_sockets(RUN_DIR, admin_socket or [])
    if not sockets:
        console.print(f"[red]no replica's admin socket in {RUN_DIR}; name them with --admin-socket[/red]")
        raise typer.Exit(1)
    found = asyncio.run(gather(sockets))
    show_rows("replicas", replica_rows(found))
    show_rows("switches", switch_rows(found))


@app.command()
def connect(a: str, b: str) -> None:
    """Connect two hosts directly through the running controller (VLAN interfaces on both)."""
    try:
        result = asyncio.run(_admin("connect", a=a, b=b))
    except RuntimeError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None
    show_rows("connection", [result])


@app.command()
def disconnect(conn_id: str) -> None:
    """Remove a connection through the running controller."""
    try:
        asyncio.run(_admin("disconnect", id=conn_id))
    except RuntimeError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None


@app.command()
def connections() -> None:
    """List the running controller's connections with their paths."""
    try:
        show_rows("connections", asyncio.run(_admin("connections")))
    except RuntimeError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None


async def _admin(op: str, **args):
    from controller.admin import call

    return await call(ADMIN_SOCKET, op, **args)


@app.command()
def switches(topology: TopologyOpt, set: SetOpt = None) -> None:
    """List switches, their ports and whether they answer P4Runtime (over TLS where the topology
    names a switch's CA, with the controller's certificate from the settings)."""
    from controller.commands.inspect import probe_switches
    from controller.identity import load_svid

    topo = load_topo(topology)
    show_rows("switches", asyncio.run(probe_switches(topo, client=load_svid(load_settings(set)))))


@app.command()
def links(topology: TopologyOpt) -> None:
    """List the topology's links."""
    topo = load_topo(topology)
    show_rows("links", [{"a": str(l.a), "b": str(l.b)} for l in topo.links])


@app.command()
def entries(switch: str, topology: TopologyOpt, set: SetOpt = None) -> None:
    """Read a switch's table entries (with counters) straight from the switch."""
    from controller.commands.inspect import read_entries

    topo = load_topo(topology)
    rows = asyncio.run(read_entries(topo, load_settings(set), switch))
    show_rows(f"entries on {switch}", rows)


@app.command()
def topo(topology: TopologyOpt, png: Annotated[Path, typer.Option(help="Write a PNG drawing here")]) -> None:
    """Draw the topology, with the running controller's connection paths when there is one."""
    from controller.commands.drawing import draw_topology

    t = load_topo(topology)
    try:
        conns = asyncio.run(_admin("connections"))
    except RuntimeError:
        conns = []
    draw_topology(t, conns, png)
    console.print(f"wrote {png}")


@app.command()
def settings() -> None:
    """Print every setting with its default (the README's table)."""
    print("| setting | default | meaning |\n|---|---|---|")
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, Path):
            default = default.relative_to(REPO_ROOT) if default.is_relative_to(REPO_ROOT) else default
        print(f"| `{name}` | `{default}` | {field.description} |")


def main() -> None:
    """The `p4nsm` console script: the controller's commands, the NSM SDK's, and those that
    packages above the controller (the Mininet lab) add through the `p4nsm.commands` entry point
    group, so that the controller never imports them."""
    from controller.commands.certs import certs_app
    from controller.commands.nsm_sdk import nsc_app, nse_app
    from controller.commands.pipeline import pipeline_app

    app.add_typer(certs_app, name="certs")
    app.add_typer(nse_app, name="nse")
    app.add_typer(nsc_app, name="nsc")
    app.add_typer(pipeline_app(ADMIN_SOCKET), name="pipeline")
    for ep in entry_points(group=COMMAND_GROUP):
        ep.load()(app)
    app()


if __name__ == "__main__":
    main()
