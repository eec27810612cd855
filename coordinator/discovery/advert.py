"""What a node's mDNS TXT record says, parsed and checked. Pure: no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

SUPPORTED_PROTOCOL_VERSIONS = frozenset({1})
_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_REQUIRED = ("node_id", "cluster", "model", "backend", "protocol_version")


class AdvertRejectedError(ValueError):
    """The advertisement is malformed, of another cluster, or of an unsupported protocol."""


@dataclass(frozen=True)
class Advertisement:
    node_id: str
    address: str
    cluster: str
    model: str
    backend: str
    quantization: str = ""
    context_size: int = 0
    protocol_version: int = 1
    token_required: bool = False


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AdvertRejectedError(f"TXT value is not UTF-8: {value!r}") from exc
    return value


def parse_advert(properties: Mapping[bytes, bytes | None] | Mapping[str, str], address: str,
                 cluster: str) -> Advertisement:
    """The advertisement in ``properties``, or AdvertRejectedError saying why not."""
    props = {_text(k): _text(v).strip() for k, v in properties.items()}
    missing = [key for key in _REQUIRED if not props.get(key)]
    if missing:
        raise AdvertRejectedError(f"TXT record lacks {', '.join(missing)}")
    if not _NODE_ID.fullmatch(props["node_id"]):
        raise AdvertRejectedError(f"malformed node_id {props['node_id']!r}")
    if props["cluster"] != cluster:
        raise AdvertRejectedError(f"node is in cluster {props['cluster']!r}, not {cluster!r}")
    try:
        version = int(props["protocol_version"])
        context_size = int(props.get("context_size") or 0)
    except ValueError as exc:
        raise AdvertRejectedError(f"malformed number in TXT record: {exc}") from exc
    if version not in SUPPORTED_PROTOCOL_VERSIONS:
        raise AdvertRejectedError(
            f"protocol version {version} is not supported (supported: {sorted(SUPPORTED_PROTOCOL_VERSIONS)})")
    if context_size < 0:
        raise AdvertRejectedError(f"negative context_size {context_size}")
    token_flag = props.get("token_required", "0")
    if token_flag not in ("0", "1"):
        raise AdvertRejectedError(f"token_required must be 0 or 1, not {token_flag!r}")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AdvertRejectedError(f"malformed address {address!r}")
    return Advertisement(
        node_id=props["node_id"], address=address, cluster=cluster, model=props["model"],
        backend=props["backend"], quantization=props.get("quantization", ""), context_size=context_size,
        protocol_version=version, token_required=token_flag == "1",
    )
