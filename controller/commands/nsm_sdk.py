"""`p4nsm nse` and `p4nsm nsc request`: an endpoint and a client of the NSM API from the shell."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from controller.settings import Settings

console = Console()

nse_app = typer.Typer(help="Run a network service endpoint (NSE) until interrupted", add_completion=False)
nsc_app = typer.Typer(help="NSM client (NSC) commands", no_args_is_help=True, add_completion=False)

NsmAddressOpt = Annotated[Optional[str], typer.Option("--nsm-address", help="Controller's NSM API, or every replica's comma-separated (default: the nsm_address setting)")]
LabelOpt = Annotated[Optional[list[str]], typer.Option("--label", help="A label key=value (repeatable)")]
CertsOpt = Annotated[Optional[Path], typer.Option("--certs", help="A `p4nsm certs init` directory: use its <role>.crt/.key and ca.crt")]
CertOpt = Annotated[Optional[Path], typer.Option("--tls-cert", help="Certificate chain (PEM): the tls_cert_file setting")]
KeyOpt = Annotated[Optional[Path], typer.Option("--tls-key", help="Its private key (PEM): the tls_key_file setting")]
CaOpt = Annotated[Optional[Path], typer.Option("--tls-ca", help="Trust bundle (PEM): the tls_ca_file setting")]
PlaintextOpt = Annotated[bool, typer.Option("--plaintext", help="No TLS (the plaintext setting); without it, certificates are required")]


def _settings(role: str, certs: Path | None, cert: Path | None, key: Path | None, ca: Path | None, plaintext: bool) -> Settings:
    """The settings (P4NSM_* variables included) with the command's TLS options on top."""
    from controller.identity import lab_settings

    overrides = lab_settings(certs, role) if certs else {}
    overrides.update({k: str(v) for k, v in (("tls_cert_file", cert), ("tls_key_file", key), ("tls_ca_file", ca)) if v})
    if plaintext:
        overrides["plaintext"] = "true"
    return Settings.load(overrides)


def _labels(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--label {item!r}: expected key=value")
        out[key] = value
    return out


def _run(main: Coroutine[Any, Any, None]) -> None:
    from controller.identity import IdentityError
    from controller.logs import setup_logging

    setup_logging("INFO")
    try:
        asyncio.run(main)
    except KeyboardInterrupt:
        pass
    except IdentityError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None


@nse_app.callback(invoke_without_command=True)
def nse(
    service: Annotated[str, typer.Option(help="Network service to serve")],
    netns: Annotated[str, typer.Option(help="Fabric host (netns) the endpoint serves from")],
    cidr: Annotated[str, typer.Option(help="Addresses to give out: a /32 pair per connection")],
    nsm_address: NsmAddressOpt = None,
    name: Annotated[str, typer.Option(help="Endpoint name (default: <service>-<netns>-<random>)")] = "",
    listen: Annotated[str, typer.Option(help="URL to serve on (default: a unix socket under nsm_run_dir)")] = "",
    label: LabelOpt = None,
    certs: CertsOpt = None,
    tls_cert: CertOpt = None,
    tls_key: KeyOpt = None,
    tls_ca: CaOpt = None,
    plaintext: PlaintextOpt = False,
    payload: Annotated[str, typer.Option(help="Payload the service is registered with, if it is not registered yet: "
                                              "IP or ETHERNET (what upstream NSM services commonly declare)")] = "IP",
) -> None:
    """Register an endpoint of SERVICE on host NETNS and answer Requests until Ctrl-C."""
    from controller.sdk.endpoint import Endpoint, EndpointConfig

    settings = _settings("nse", certs, tls_cert, tls_key, tls_ca, plaintext)
    try:
        config = EndpointConfig(service=service, host=netns, cidr=cidr, nsm_url=nsm_address or settings.nsm_address,
                                name=name, listen_url=listen, labels=_labels(label), payload=payload)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None

    async def main() -> None:
        endpoint = Endpoint(config, settings)
        try:
            await endpoint.start()
            console.print(f"endpoint [bold]{endpoint.name}[/] of {service} on {netns} at {endpoint.url}; Ctrl-C to stop")
            await asyncio.Event().wait()
        finally:
            await endpoint.stop()

    _run(main())


@nsc_app.command()
def request(
    service: Annotated[str, typer.Option(help="Network service to request")],
    netns: Annotated[str, typer.Option(help="Fabric host (netns) the client's interface goes into")],
    name: Annotated[str, typer.Option(help="Interface name in the netns (at most 15 characters)")] = "nsm0",
    nsm_address: NsmAddressOpt = None,
    label: LabelOpt = None,
    give_up_after: Annotated[float, typer.Option(help="Seconds to keep trying the first Request")] = 30.0,
    certs: CertsOpt = None,
    tls_cert: CertOpt = None,
    tls_key: KeyOpt = None,
    tls_ca: CaOpt = None,
    plaintext: PlaintextOpt = False,
    liveness: Annotated[bool, typer.Option(help="Heal with a data-plane check (ping the endpoint's addresses): while it "
                                                "answers, a broken monitor stream (the controller restarted) re-requests "
                                                "the same path instead of reselecting")] = True,
) -> None:
    """Request SERVICE for NETNS, keep the connection refreshed and healed until Ctrl-C, then Close."""
    from controller.sdk.client import Client
    from controller.sdk.liveness import ping_liveness

    settings = _settings("nsc", certs, tls_cert, tls_key, tls_ca, plaintext)

    async def main() -> None:
        client = Client(nsm_address or settings.nsm_address, settings, liveness=ping_liveness(netns) if liveness else None)
        try:
            conn = await client.request(service, netns, iface=name, labels=_labels(label), give_up_after=give_up_after)
            table = Table(title=f"connection {conn.id}", show_header=False)
            ip = conn.context.ip_context
            for key, value in (("endpoint", conn.network_service_endpoint_name), ("interface", f"{netns}/{name}"),
                               ("vlan", conn.mechanism.parameters.get("vlan", "")), ("address", ", ".join(ip.src_ip_addrs)),
                               ("endpoint address", ", ".join(ip.dst_ip_addrs))):
                table.add_row(key, value)
            console.print(table)
            console.print("kept refreshed; Ctrl-C to close")
            seen = len(client.history)
            while True:
                await asyncio.sleep(1)
                for event in client.history[seen:]:
                    if event != "refreshed":
                        console.print(event)
                seen = len(client.history)
        finally:
            await client.close()

    _run(main())
