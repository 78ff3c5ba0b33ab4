"""Test certificates (the `cryptography` package): a CA and a server certificate it signed, as
infrap4d's generate-certs.sh makes them, the client credentials that trust that CA, and client
certificates with a SPIFFE id (mutual TLS)."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from collections.abc import Sequence
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
        ca_key = serialization.load_pem_private_key(self.ca.with_suffix(".key").read_bytes(), None)
        ca = x509.load_pem_x509_certificate(self.ca.read_bytes())
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (_leaf(ca.subject, key, name).add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
        out = ClientCert(self.ca.with_name(f"{name}.crt"), self.ca.with_name(f"{name}.key"), spiffe_id)
        _write(out.cert, out.key, cert, key)
        return out


@dataclasses.dataclass(frozen=True)
class ClientCert:
    cert: Path
    key: Path
    spiffe_id: str


def _leaf(issuer: x509.Name, key: ec.EllipticCurvePrivateKey, common: str) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))


def _write(cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)


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
    cert = (_leaf(ca.subject, key, server_name)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(server_name),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    out = Certs(directory / "ca.crt", directory / "stratum.crt", directory / "stratum.key", server_name)
    _write(out.cert, out.key, cert, key)
    _write(out.ca, out.ca.with_suffix(".key"), ca, ca_key)  # the CA key signs client certificates later
    return out
