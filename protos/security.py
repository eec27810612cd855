"""How a DELLM process proves who it is: the cluster token and TLS, one frozen config per process.

- a cluster token, sent by every channel (dellm.protos.transport) as call metadata (``x-dellm-token``)
  and checked on every server (health and reflection stay open, so load balancers and ``grpcurl
  list`` work without it); digests are compared in constant time;
- TLS: a server with a certificate serves TLS, and with a CA it requires client certificates signed
  by it (mutual TLS); every channel presents the same certificate and verifies servers with the CA.

The command-line flags for it (:func:`add_security_arguments`) are shared by all three commands.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import hmac
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

TOKEN_METADATA_KEY = "x-dellm-token"
MISSING_TOKEN = "this cluster requires a token: pass --token or set DELLM_TOKEN"
INVALID_TOKEN = "the token is not valid"


class SecurityError(ValueError):
    """Security settings that cannot work: a malformed token, an unreadable or mismatched PEM file."""


def check_token(token: str) -> None:
    """A token must be visible ASCII: gRPC metadata cannot carry anything else (never echoes the token)."""
    if not token:
        raise SecurityError("the token is empty")
    if not all("!" <= ch <= "~" for ch in token):
        raise SecurityError(f"the token ({len(token)} characters) must be visible ASCII: no spaces, "
                            "line breaks or non-ASCII letters (for example `python -c 'import secrets; "
                            "print(secrets.token_urlsafe(32))'`)")


def read_token_file(path: Path) -> str:
    """The token in ``path``, without the surrounding whitespace (the newline an editor adds)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecurityError(f"cannot read the token file {path}: {exc}") from exc
    if not token:
        raise SecurityError(f"the token file {path} is empty")
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            log.warning("the token file %s can be read by other users (chmod 600 it)", path)
    return token


@dataclass(frozen=True)
class TlsFiles:
    """The PEM bytes of a SecurityConfig's files, read and checked once."""

    cert: bytes | None
    key: bytes | None
    ca: bytes | None


@dataclass(frozen=True)
class SecurityConfig:
    """How one process authenticates and encrypts; the default is today's plaintext, open cluster."""

    token: str | None = field(default=None, repr=False)  # cluster token; None: none required, none sent
    tls_cert: Path | None = None  # PEM certificate: served by servers, presented by channels (mutual TLS)
    tls_key: Path | None = None  # its PEM private key
    tls_ca: Path | None = None  # PEM CA: channels verify servers with it; servers require client certs signed by it
    client_auth: bool = True  # a server with tls_ca requires client certificates (False: TLS, but no client certs)

    def __post_init__(self) -> None:
        if self.token is not None:
            check_token(self.token)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SecurityError("a TLS certificate needs its key, and a key its certificate")

    @property
    def token_required(self) -> bool:
        return self.token is not None

    @property
    def serves_tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def dials_tls(self) -> bool:
        return self.tls_cert is not None or self.tls_ca is not None

    @property
    def requires_client_cert(self) -> bool:
        return self.serves_tls and self.tls_ca is not None and self.client_auth

    def describe(self) -> str:
        """For logs and readiness lines, e.g. ``token, mutual TLS`` (never the token)."""
        tls = "mutual TLS" if self.requires_client_cert else "TLS" if self.serves_tls else "plaintext"
        return f"{'token' if self.token_required else 'no token'}, {tls}"

    @functools.cached_property
    def files(self) -> TlsFiles:
        """Read the PEM files, checking that each parses and that the key belongs to the certificate."""
        return read_tls_files(self.tls_cert, self.tls_key, self.tls_ca)

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if not self.serves_tls:
            return None
        files = self.files
        assert files.cert is not None and files.key is not None
        require = self.requires_client_cert
        return grpc.ssl_server_credentials([(files.key, files.cert)], root_certificates=files.ca if require else None,
                                           require_client_auth=require)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        if not self.dials_tls:
            return None
        files = self.files
        return grpc.ssl_channel_credentials(root_certificates=files.ca, private_key=files.key,
                                            certificate_chain=files.cert)


def read_tls_files(cert: Path | None, key: Path | None, ca: Path | None) -> TlsFiles:
    def read(path: Path | None, what: str) -> bytes | None:
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SecurityError(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from exc
        if b"-----BEGIN " not in data:
            raise SecurityError(f"the TLS {what} {path} is not a PEM file")
        return data

    files = TlsFiles(read(cert, "certificate"), read(key, "key"), read(ca, "CA certificate"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cert is not None and key is not None:
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise SecurityError(f"the TLS key {key} does not belong to the certificate {cert}, or one of them "
                                f"is not valid ({exc.reason or exc})") from exc
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(ca))
        except ssl.SSLError as exc:
            raise SecurityError(f"the TLS CA certificate {ca} is not valid ({exc.reason or exc})") from exc
    return files


def add_security_arguments(parser: argparse.ArgumentParser, *, server: bool) -> None:
    """Declare the security flags every DELLM command shares (the CLIs parse them)."""
    group = parser.add_argument_group("security")
    tokens = group.add_mutually_exclusive_group()
    tokens.add_argument("--token", default=None,
                        help="cluster token (visible ASCII; default: $DELLM_TOKEN). A flag shows in `ps`: prefer "
                             "--token-file or the environment")
    tokens.add_argument("--token-file", type=Path, default=None, metavar="PATH",
                        help="file holding the cluster token (surrounding whitespace ignored)")
    role = "served, and presented to the servers this process calls" if server else "presented to the coordinator"
    group.add_argument("--tls-cert", type=Path, default=None, metavar="PEM", help=f"TLS certificate, {role}")
    group.add_argument("--tls-key", type=Path, default=None, metavar="PEM", help="private key of --tls-cert")
    group.add_argument("--tls-ca", type=Path, default=None, metavar="PEM",
                       help="CA certificate that servers are verified with" +
                            (", and that client certificates must be signed by (mutual TLS)" if server else ""))
    if server:
        group.add_argument("--tls-client-auth", action=argparse.BooleanOptionalAction, default=True,
                           help="with --tls-ca, require client certificates (default: on)")


def security_from_arguments(args: argparse.Namespace, env_token: str | None, *, server: bool) -> SecurityConfig:
    """The SecurityConfig the flags of :func:`add_security_arguments` ask for, its PEM files read and
    checked; raises SecurityError saying what is wrong (never echoing the token)."""
    if args.token is not None:
        token: str | None = args.token
    elif args.token_file is not None:
        token = read_token_file(args.token_file)
    else:
        token = env_token or None
    if server and args.tls_ca is not None and args.tls_cert is None:
        raise SecurityError("--tls-ca needs --tls-cert and --tls-key: the server serves TLS with them")
    security = SecurityConfig(token=token, tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca,
                              client_auth=getattr(args, "tls_client_auth", True))
    security.files  # noqa: B018 (read and check the PEM files now: a bad one stops the command at once)
    return security


# --- the cluster token ----------------------------------------------------------------------------------------


def token_digest(token: str | bytes) -> bytes:
    raw = token if isinstance(token, bytes) else token.encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).digest()


def token_refusal(metadata: Iterable[tuple[str, str | bytes]] | None, expected_digest: bytes) -> str | None:
    """None when the call carries exactly one ``x-dellm-token`` equal to the cluster token, else why not.

    The SHA-256 digests are compared with ``hmac.compare_digest``, so the time taken says nothing
    about the token, its length included.
    """
    given = [value for key, value in metadata or () if key == TOKEN_METADATA_KEY]
    if not given or (len(given) == 1 and not given[0]):
        return MISSING_TOKEN
    if len(given) > 1:  # ambiguous: one request must not try several guesses
        return INVALID_TOKEN
    return None if hmac.compare_digest(token_digest(given[0]), expected_digest) else INVALID_TOKEN
