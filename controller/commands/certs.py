"""`p4nsm certs init DIR`: a local CA and SPIFFE certificates for a lab (controller/identity)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()
certs_app = typer.Typer(help="Certificates for TLS and mTLS (SPIFFE X.509 SVIDs)", no_args_is_help=True, add_completion=False)


@certs_app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where ca.crt, ca.key and <name>.crt/.key go")],
    switch: Annotated[Optional[list[str]], typer.Option("--switch", help="Also a server certificate for this switch (DNS SAN its name; repeatable)")] = None,
    identity: Annotated[Optional[list[str]], typer.Option("--identity", help="Also NAME=PATH: a certificate for spiffe://<trust domain>/PATH (repeatable)")] = None,
    trust_domain: Annotated[str, typer.Option(help="SPIFFE trust domain")] = "p4nsm",
    days: Annotated[float, typer.Option(help="Validity of every certificate made (days)")] = 30.0,
    renew: Annotated[bool, typer.Option(help="Issue anew the certificates that are there already (the CA is kept)")] = False,
) -> None:
    """Make a CA in DIR (kept if there) and certificates for the controller, nsc, nse, operator."""
    from controller.identity import init_lab_certs

    extra = {}
    for item in identity or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"--identity {item!r}: expected NAME=PATH")
        extra[name] = path
    lab = init_lab_certs(directory, trust_domain=trust_domain, switches=switch or [], extra=extra, days=days, renew=renew)
    table = Table(title=f"certificates in {directory} (trust bundle: {lab.ca})")
    for column in ("name", "spiffe id", "certificate", "key"):
        table.add_column(column)
    for name in lab.names:
        table.add_row(name, lab.spiffe_id(name), str(lab.cert(name)), str(lab.key(name)))
    console.print(table)
    console.print(f"use one: --set tls_cert_file={lab.cert('controller')} --set tls_key_file={lab.key('controller')} "
                  f"--set tls_ca_file={lab.ca}")
