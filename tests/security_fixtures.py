"""Helpers for security tests: a test PKI made with ``cryptography``, and in-process clusters with a
token and/or TLS, over real gRPC on loopback. Test modules wrap them in fixtures of their own."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dellm.coordinator.config import CoordinatorConfig
from dellm.protos.security import SecurityConfig
from tests.conftest import Cluster

TOKEN = "dellm-test-token-Q7x9Vb2Lk4Zp"  # visible ASCII, as real tokens (secrets.token_urlsafe) are
LOOPBACK_NAMES = ("127.0.0.1", "127.0.0.2", "localhost", "::1")


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """A cluster CA with a server (and peer) identity and a user's client identity, plus a second,
    untrusted CA with identities of its own: what an outsider would bring."""

    ca: Path
    server: Identity  # serverAuth + clientAuth: coordinators and nodes serve it and present it to each other
    client: Identity  # clientAuth only: the person running `dellm`
    other_ca: Path
    other_server: Identity
    other_client: Identity


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Identity:
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return Identity(cert_path, key_path)


def _ca(folder: Path, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    path = folder / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def _leaf(folder: Path, name: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, *,
          server: bool) -> Identity:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server \
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    if server:
        names: list[x509.GeneralName] = []
        for host in LOOPBACK_NAMES:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return _write(folder, name, builder.sign(ca_key, hashes.SHA256()), key)


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key, ca_path = _ca(folder, "dellm-test-ca")
    other, other_key, other_path = _ca(folder, "outsider-ca")
    return Pki(ca=ca_path, server=_leaf(folder, "cluster", ca, ca_key, server=True),
               client=_leaf(folder, "user", ca, ca_key, server=False), other_ca=other_path,
               other_server=_leaf(folder, "outsider-server", other, other_key, server=True),
               other_client=_leaf(folder, "outsider-user", other, other_key, server=False))


def cluster_security(pki: Pki, *, token: str | None = TOKEN, mutual: bool = True) -> SecurityConfig:
    """What the coordinator and nodes of a TLS cluster run with."""
    return SecurityConfig(token=token, tls_cert=pki.server.cert, tls_key=pki.server.key, tls_ca=pki.ca,
                          client_auth=mutual)


def user_security(pki: Pki, *, token: str | None = TOKEN, cert: bool = True) -> SecurityConfig:
    """What a `dellm` user of that cluster runs with."""
    return SecurityConfig(token=token, tls_ca=pki.ca, tls_cert=pki.client.cert if cert else None,
                          tls_key=pki.client.key if cert else None)


SecureCluster = Cluster  # tests.conftest.Cluster runs every process with its ``security``


async def secure_cluster(tmp: Path, security: SecurityConfig, config: CoordinatorConfig | None = None,
                         listen: str = "127.0.0.1:0") -> SecureCluster:
    cluster = SecureCluster(tmp, config or CoordinatorConfig(), security=security, listen=listen)
    await cluster.start_coordinator()
    return cluster


__all__ = ["TOKEN", "Pki", "SecureCluster", "cluster_security", "make_pki", "secure_cluster", "user_security"]
