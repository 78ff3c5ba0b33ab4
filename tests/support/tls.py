"""Test certificates, made by the lab CA (controller/identity/lab_ca.py): a CA and a plain server
certificate it signed (DNS and IP SANs, no SPIFFE id), as infrap4d's generate-certs.sh makes
them, the client credentials that trust that CA, and client certificates with a SPIFFE id
(mutual TLS)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import grpc

from controller.identity.lab_ca import init_ca, issue

SERVER_NAME = "p4nsm-switch"  # the certificate's DNS name: clients override the target name to it


@dataclasses.dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path
    server_name: str = SERVER_NAME

    def server_args(self) -> list[str]:
        """The softswitch's options for TLS with this certificate."""
        return ["--grpc-server-ssl", "--grpc-server-cert", str(self.cert), "--grpc-server-key", str(self.key)]

    def mtls_server_args(self, *allowed: str) -> list[str]:
        """TLS that requires a client certificate of this CA; `allowed`: --grpc-server-allow entries."""
        return [*self.server_args(), "--grpc-server-with-client-auth", "--grpc-server-cacert", str(self.ca),
                *[arg for entry in allowed for arg in ("--grpc-server-allow", entry)]]

    def channel(self, address: str, client: ClientCert | None = None,
                options: Sequence[tuple[str, int | str]] = ()) -> grpc.Channel:
        """A blocking channel that trusts the CA and checks the server's name; with `client`,
        that certificate is offered when the server asks."""
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=client.key.read_bytes() if client else None,
            certificate_chain=client.cert.read_bytes() if client else None)
        return grpc.secure_channel(address, credentials,
                                   options=[*options, ("grpc.ssl_target_name_override", self.server_name)])

    def client(self, spiffe_id: str, name: str) -> ClientCert:
        """A client certificate of this CA whose URI SAN is `spiffe_id`, written as NAME.crt/.key."""
        cert, key = issue(self.ca.parent, name, spiffe_id, days=1)
        return ClientCert(cert, key, spiffe_id)


@dataclasses.dataclass(frozen=True)
class ClientCert:
    cert: Path
    key: Path
    spiffe_id: str


def make_certs(directory: Path, server_name: str = SERVER_NAME) -> Certs:
    """A CA and a server certificate for `server_name` and 127.0.0.1, written as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    init_ca(directory, days=1)
    cert, key = issue(directory, "stratum", None, dns=(server_name,), days=1)  # 127.0.0.1 is in every certificate
    return Certs(directory / "ca.crt", cert, key, server_name)
