"""What both sides of the wire agree on beyond dellm.proto's messages, defined once.

- the protocol version a node speaks and the versions a coordinator accepts;
- :class:`NodeDescription`, a node's description as plain data, and its conversion to and from
  the proto ``NodeInfo`` (the registry stores it, Join and Info carry it);
- the mDNS service type and the TXT record: one key list, :func:`encode_txt` for the node and
  :func:`parse_txt` for the coordinator;
- the vocabularies: :class:`FeedbackSource` (where a verdict's evidence came from) and
  :class:`NodeState` (what the registry says of a node).

Pure: no I/O, nothing but the generated messages imported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from enum import StrEnum

from dellm.protos import dellm_pb2

PROTOCOL_VERSION = 1  # what this release's node speaks
SUPPORTED_PROTOCOL_VERSIONS = frozenset({1})  # what this release's coordinator accepts

SERVICE_TYPE = "_dellm._tcp.local."


class FeedbackSource(StrEnum):
    """Where the evidence behind a verdict came from, strongest first."""

    LABEL = "label"  # a ground-truth label (benchmarks, --accept-labels)
    EXACT_CHECK = "exact_check"  # the value of the chunk's arithmetic, computed by the coordinator
    USER = "user"  # a person's `dellm feedback`
    CANARY = "canary"  # a probe question the coordinator knows the answer to
    VOTE = "vote"  # a real majority: two or more nodes agreeing
    FAILURE = "failure"  # the stream failed, or the answer was empty or malformed
    NONE = "none"  # no evidence: no verdict


# Evidence beyond the nodes' own agreement: only these pay the speed bonus and make few-shot examples.
VERIFIED_SOURCES = frozenset({FeedbackSource.EXACT_CHECK, FeedbackSource.LABEL, FeedbackSource.USER})


class NodeState(StrEnum):
    """A node in the registry: routed to (up), missing health checks (down), evicted after its TTL (gone),
    new and answering canaries before it gets work (probation)."""

    UP = "up"
    DOWN = "down"
    GONE = "gone"
    PROBATION = "probation"


@dataclass(frozen=True)
class NodeDescription:
    """What a node says about itself: its Info, its Join, and (in part) its mDNS TXT record."""

    node_id: str
    address: str
    name: str = ""
    model: str = ""
    backend: str = ""
    quantization: str = ""
    context_size: int = 0
    hardware: str = ""
    version: str = ""
    model_sha256: str = ""
    protocol_version: int = PROTOCOL_VERSION
    cluster: str = "default"
    token_required: bool = False


def description_from_proto(message: dellm_pb2.NodeInfo) -> NodeDescription:
    return NodeDescription(**{f.name: getattr(message, f.name) for f in fields(NodeDescription)})


def description_to_proto(info: NodeDescription) -> dellm_pb2.NodeInfo:
    return dellm_pb2.NodeInfo(**asdict(info))


# --- the mDNS TXT record ---------------------------------------------------------------------------------------

# What a coordinator needs to decide whether to talk to a node at all; never the token itself.
TXT_KEYS = ("node_id", "cluster", "model", "backend", "quantization", "context_size", "protocol_version",
            "token_required")
_TXT_REQUIRED = ("node_id", "cluster", "model", "backend", "protocol_version")
_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_node_id(value: str) -> bool:
    """Whether ``value`` can be a node id (1-64 letters, digits, '-' or '_'), as Join and mDNS require."""
    return bool(_NODE_ID.fullmatch(value))


class AdvertRejectedError(ValueError):
    """The advertisement is malformed, of another cluster, or of an unsupported protocol."""


def encode_txt(info: NodeDescription) -> dict[str, str]:
    values = {key: getattr(info, key) for key in TXT_KEYS}
    return {key: ("1" if value else "0") if isinstance(value, bool) else str(value) for key, value in values.items()}


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AdvertRejectedError(f"TXT value is not UTF-8: {value!r}") from exc
    return value


def parse_txt(properties: Mapping[bytes, bytes | None] | Mapping[str, str], address: str,
              cluster: str) -> NodeDescription:
    """The node a TXT record describes (the TXT fields only), or AdvertRejectedError saying why not."""
    props = {_text(k): _text(v).strip() for k, v in properties.items()}
    missing = [key for key in _TXT_REQUIRED if not props.get(key)]
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
    return NodeDescription(
        node_id=props["node_id"], address=address, cluster=cluster, model=props["model"],
        backend=props["backend"], quantization=props.get("quantization", ""), context_size=context_size,
        protocol_version=version, token_required=token_flag == "1",
    )
