"""Test certificates (the `cryptography` package): a CA and a server certificate it signed, as
infrap4d's generate-certs.sh makes them, and the client credentials that trust that CA."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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

    def channel(self, address: str) -> grpc.Channel:
        """A blocking channel that trusts the CA and checks the server's name."""
        credentials = grpc.ssl_channel_credentials(root_certificates=self.ca.read_bytes())
        return grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", self.server_name)])


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_certs(directory: Path, server_name: str = SERVER_NAME) -> Certs:
    """A CA and a server certificate for `server_name` and 127.0.0.1, written as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("p4nsm test CA")).issuer_name(_name("p4nsm test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(server_name)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(server_name),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    out = Certs(directory / "ca.crt", directory / "stratum.crt", directory / "stratum.key", server_name)
    out.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    out.key.chmod(0o600)
    return out
