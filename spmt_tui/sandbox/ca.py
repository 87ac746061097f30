"""Certificate authority and TLS material for the sandbox tenant.

The sandbox serves HTTPS only, like SharePoint Online. On first start it creates a private CA in
``DIR/ca`` and a server certificate for ``127.0.0.1`` and ``localhost`` signed by it; clients
trust the CA through the ``ca_bundle`` path of the tenant profile. It also creates the
certificate of the sandbox's app registration, which a client uses for app-only sign-in.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_VALIDITY = dt.timedelta(days=825)


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the CA certificate and of the server's certificate and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.server_cert, self.server_key)
        return context


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "spmt-tui sandbox"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return cert, key


def _create_ca(ca_dir: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _new_key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("spmt-tui sandbox CA"))
        .issuer_name(_name("spmt-tui sandbox CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(ca_dir / "ca.key", _key_pem(key))
    (ca_dir / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _issue(
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    common_name: str,
    *,
    hosts: list[str] | None,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _new_key()
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def ensure_tls(data_dir: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """Create the CA and the server certificate under ``data_dir/ca`` unless they exist."""
    ca_dir = data_dir / "ca"
    ca_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(ca_dir, 0o700)
    if (ca_dir / "ca.pem").exists() and (ca_dir / "ca.key").exists():
        ca_cert, ca_key = _load_ca(ca_dir)
    else:
        ca_cert, ca_key = _create_ca(ca_dir)
    files = TlsFiles(ca_dir / "ca.pem", ca_dir / "server.pem", ca_dir / "server.key")
    if not (files.server_cert.exists() and files.server_key.exists()):
        cert, key = _issue(ca_cert, ca_key, hosts[0], hosts=list(hosts))
        _write_private(files.server_key, _key_pem(key))
        # The chain file carries the CA too, so Node (Azurite) sends the whole chain.
        files.server_cert.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + ca_cert.public_bytes(serialization.Encoding.PEM)
        )
    return files


@dataclass(frozen=True)
class AppCertificate:
    """A certificate app registration: one PEM with key and certificate, and its SHA-1 thumbprint."""

    pem_path: Path
    thumbprint: str
    public_pem: bytes


def ensure_app_certificate(data_dir: Path, name: str = "app") -> AppCertificate:
    """Create (once) the key and certificate a client presents for app-only sign-in."""
    app_dir = data_dir / "app"
    app_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(app_dir, 0o700)
    pem_path = app_dir / f"{name}.pem"
    if not pem_path.exists():
        ca_cert, ca_key = _load_ca(data_dir / "ca")
        cert, key = _issue(ca_cert, ca_key, f"spmt-tui sandbox {name}", hosts=None)
        _write_private(pem_path, _key_pem(key) + cert.public_bytes(serialization.Encoding.PEM))
    return load_app_certificate(pem_path)


def load_app_certificate(pem_path: Path) -> AppCertificate:
    data = pem_path.read_bytes()
    cert = x509.load_pem_x509_certificate(data)
    der = cert.public_bytes(serialization.Encoding.DER)
    return AppCertificate(
        pem_path=pem_path,
        thumbprint=hashlib.sha1(der).hexdigest().upper(),
        public_pem=cert.public_bytes(serialization.Encoding.PEM),
    )
