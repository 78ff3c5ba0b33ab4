"""A local CA and SPIFFE certificates for a lab (`p4nsm certs init DIR`): what SPIRE would hand
out, made with the `cryptography` package. EC P-256 keys throughout, so the same key signs the
tokens of its hop (ES256).

DIR holds `ca.crt` (the trust bundle, every tls_ca_file), `ca.key`, and `<name>.crt` /
`<name>.key` per identity. Every leaf carries its SPIFFE id as the one URI SAN and both
serverAuth and clientAuth (an SDK endpoint serves and dials), and `localhost`, 127.0.0.1 and ::1:
gRPC checks the name it dials against the DNS/IP SANs (a unix socket dials as `localhost`)."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.identity.svid import spiffe_id_of

TRUST_DOMAIN = "p4nsm"
# name -> SPIFFE id path: the controller (its id is nsm_spiffe_id's default), the SDK's two
# roles, and an operator who may see every connection.
ROLES = {"controller": "controller", "nsc": "nsc", "nse": "nse", "operator": "operator"}
LOCAL_NAMES = ("localhost",)
LOCAL_IPS = ("127.0.0.1", "::1")


@dataclasses.dataclass(frozen=True)
class LabCerts:
    dir: Path
    trust_domain: str
    names: tuple[str, ...]

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def spiffe_id(self, name: str) -> str:
        """The SPIFFE id in `name`'s certificate."""
        return spiffe_id_of(x509.load_pem_x509_certificate(self.cert(name).read_bytes()))

    def settings(self, name: str) -> dict[str, str]:
        return lab_settings(self.dir, name)


def lab_settings(directory: Path, name: str) -> dict[str, str]:
    """Settings overrides that make a process `name` of the lab in `directory`."""
    return {"tls_cert_file": str(directory / f"{name}.crt"), "tls_key_file": str(directory / f"{name}.key"),
            "tls_ca_file": str(directory / "ca.crt")}


def init_lab_certs(directory: Path, *, trust_domain: str = TRUST_DOMAIN, switches: Iterable[str] = (),
                   extra: Mapping[str, str] | None = None, days: float = 30.0, renew: bool = False) -> LabCerts:
    """A CA in `directory` (kept when one is there, so certificates it issued stay valid) and a
    certificate for the controller, `nsc`, `nse`, `operator`, each switch (SPIFFE id
    `switch/<name>`, DNS SAN its name) and each of `extra` (name -> SPIFFE id path). A
    certificate already there is kept unless `renew` (a process may be reading it): calling
    this twice on one directory, from the lab and from the switches' side, is harmless."""
    directory.mkdir(parents=True, exist_ok=True)
    init_ca(directory, trust_domain, days)
    switches = tuple(switches)
    paths = {**ROLES, **{s: f"switch/{s}" for s in switches}, **(extra or {})}
    for name, path in paths.items():
        if not renew and (directory / f"{name}.crt").exists() and (directory / f"{name}.key").exists():
            continue
        issue(directory, name, f"spiffe://{trust_domain}/{path}", dns=(name,) if name in switches else (), days=days)
    return LabCerts(directory, trust_domain, tuple(paths))


def issue(directory: Path, name: str, spiffe_id: str | None, *, dns: Iterable[str] = (), ips: Iterable[str] = (),
          days: float = 30.0) -> tuple[Path, Path]:
    """A certificate `<name>.crt` and key `<name>.key` for `spiffe_id`, signed by the CA of
    `directory` (init_ca made it); returns their paths. Without a SPIFFE id it is a plain
    server certificate (DNS and IP SANs only), as a switch's own tooling makes them."""
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)] if spiffe_id else []
    sans += [x509.DNSName(d) for d in (*dns, *LOCAL_NAMES)]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in (*ips, *LOCAL_IPS)]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "p4nsm lab"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return cert_path, key_path


def init_ca(directory: Path, trust_domain: str = TRUST_DOMAIN, days: float = 30.0) -> None:
    """`ca.crt` and `ca.key` in `directory`, unless a CA is there already."""
    if (directory / "ca.crt").exists() and (directory / "ca.key").exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "p4nsm lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"p4nsm lab CA {trust_domain}")])
    start, end = _validity(days)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write_key(directory / "ca.key", key)
    (directory / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _validity(days: float) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    # a little before now: clocks of the lab's processes may disagree by a second or two
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
