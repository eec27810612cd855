"""Node identity: a node id belongs to the node that first joined with it, and only it may rejoin or leave.

How a node proves it. At its first start a node makes a random secret and keeps it beside its id
(node/state.py, mode 0600). Every Join and Leave carries it. At the id's first Join the coordinator
binds the id to the secret's SHA-256 digest, kept in the registry across restarts; from then on a
Join or Leave for the id without that secret is refused (PERMISSION_DENIED), and the id moves to a
new address only with the secret and once the old address no longer answers as the id.

Why a secret the node makes, and not a key pair with the id derived from the public key, or a secret
the coordinator issues:

- no new dependency for nodes (``cryptography`` is only a dev extra; a node installs grpc alone);
- the ids nodes already have, and the fitness the registry keeps under them, stay valid: a key-derived
  id would start every existing node over as a stranger;
- a signature over Join/Leave without a coordinator nonce could be replayed by whoever saw it once, so
  it would need a challenge round trip; the secret travels exactly as the cluster token does (call
  data, encrypted under TLS), and digests are compared in constant time;
- a coordinator-issued secret would have to be kept per coordinator address, and a coordinator that
  comes back on another address or name (or a second coordinator on a shared Redis registry) would
  lock the node out of its own id. The node's own secret works with any of them.

The costs: trust on first use (whoever joins an unbound id first owns it; an id already registered
without a secret, from before this change or found by mDNS, is bound on its next Join only if its old
address no longer answers as that id), and every coordinator a node joins learns the secret (they are
trusted with the node's work and feedback anyway).
"""

from __future__ import annotations

import hashlib
import hmac

from dellm.coordinator.errors import AdmissionRejectedError

MIN_SECRET_CHARS = 32  # a node makes 43 (32 random bytes); shorter ones can be guessed
MAX_SECRET_CHARS = 256


def check_secret(secret: str) -> None:
    """AdmissionRejectedError for a secret too short, too long or not visible ASCII (never echoed); empty is
    allowed: a node from before node secrets, whose id stays unbound."""
    if secret and not (MIN_SECRET_CHARS <= len(secret) <= MAX_SECRET_CHARS and secret.isascii()
                       and secret.isprintable() and " " not in secret):
        raise AdmissionRejectedError(f"a node secret must be {MIN_SECRET_CHARS}-{MAX_SECRET_CHARS} visible ASCII "
                                     f"characters (this one has {len(secret)})")


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def proves(secret: str, digest: str) -> bool:
    """Whether ``secret`` is the one ``digest`` was made from (constant time; an empty secret never is)."""
    return bool(secret) and hmac.compare_digest(secret_digest(secret), digest)
