"""Node identity: a node id belongs to the node that first joined with it, and only it may rejoin or leave.

How a node proves it. At a node id's first Join the coordinator issues a random secret (JoinReply
``node_secret``), keeps only its SHA-256 digest in the registry (across restarts), and the node keeps
the secret in its state folder; every later Join and Leave for that id must present it.

Why a coordinator-issued secret and not a key pair with the id derived from the public key:

- no new dependency for nodes (``cryptography`` is only a dev extra; a node installs grpc alone);
- the ids nodes already have, and the fitness the registry keeps under them, stay valid: a key-derived
  id would start every existing node over as a stranger;
- a signature over Join/Leave without a coordinator nonce could be replayed by whoever saw it once,
  so it would need a challenge round trip; the secret travels exactly as the cluster token does (in
  call data, encrypted under TLS), and the coordinator compares digests in constant time.

The cost is trust on first use: whoever joins an unbound id first owns it. An id already registered
(a registry from before this change) is bound on its next Join only if its old address does not
answer as that id (see ``Coordinator.admit``), so a running node cannot be taken over that way either.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SECRET_BYTES = 32  # 256 bits: 43 URL-safe characters


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def proves(secret: str, digest: str) -> bool:
    """Whether ``secret`` is the one ``digest`` was made from (constant time; an empty secret never is)."""
    return bool(secret) and hmac.compare_digest(secret_digest(secret), digest)
