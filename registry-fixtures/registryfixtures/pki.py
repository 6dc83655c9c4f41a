"""A per-run certificate authority: a CA, a server certificate for 127.0.0.1 and localhost,
and a client certificate, all EC P-256 (fast to make, accepted by Go and OpenSSL verifiers).

The token service signs its tokens with a certificate made here too.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    """Files of a per-run CA, a server certificate for 127.0.0.1/localhost and a client cert."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nestbuild tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False)


def issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    san: list[x509.GeneralName] | None = None,
    usage: list[x509.ObjectIdentifier] | None = None,
    days: int = 30,
) -> x509.Certificate:
    """One X.509 certificate; SKI/AKI and key usage keep strict verifiers (Go, OpenSSL) happy."""
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _name(subject))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(_key_usage(ca=ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    signer_public = issuer_key.public_key()
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_public), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    path.chmod(0o600)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(directory: Path, client_name: str = "nestbuild-test-client") -> Pki:
    """Generate a CA plus server and client certificates (EC P-256, fast) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = new_key()
    ca = issue("nestbuild test CA " + secrets.token_hex(4), ca_key, None, ca_key, ca=True)
    server_key = new_key()
    server = issue(
        "127.0.0.1", server_key, ca, ca_key,
        san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
        usage=[ExtendedKeyUsageOID.SERVER_AUTH])
    client_key = new_key()
    client = issue(client_name, client_key, ca, ca_key,
                    usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    pki = Pki(directory, directory / "ca.crt", directory / "ca.key",
              directory / "server.crt", directory / "server.key",
              directory / "client.cert", directory / "client.key")
    write_cert(pki.ca_cert, ca)
    write_key(pki.ca_key, ca_key)
    write_cert(pki.server_cert, server)
    write_key(pki.server_key, server_key)
    write_cert(pki.client_cert, client)
    write_key(pki.client_key, client_key)
    return pki
