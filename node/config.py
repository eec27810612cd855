"""The node daemon's settings, with the reason for each default. Only ``node.cli`` reads flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dellm.protos.security import SecurityConfig


def default_state_dir() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "dellm"


@dataclass(frozen=True)
class NodeConfig:
    listen: str = "127.0.0.1:0"  # port 0: any free port, reported to the coordinator on Join
    name: str = ""  # human name; also picks the state folder, so two nodes on one machine differ
    coordinator: str | None = None  # HOST:PORT to join; None serves without joining
    cluster: str = "default"  # coordinators admit only nodes of their own cluster
    advertise: bool = False  # announce over mDNS (the CLI turns this on by default)
    interface: str | None = None  # address zeroconf binds to; None: every interface
    state_dir: Path = field(default_factory=default_state_dir)
    max_tokens_cap: int = 1024  # a request asking for more is cut to this
    default_max_tokens: int = 128  # when a request gives none
    max_prompt_chars: int = 16_000  # longer prompts are refused with INVALID_ARGUMENT
    join_timeout_s: float = 20.0  # one Join/Leave call (a Join includes the coordinator's warm-up of this node)
    rejoin_interval_s: float = 15.0  # heartbeat Join; brings the node back after a coordinator restart
    drain_grace_s: float = 30.0  # SIGTERM: in-flight streams get this long to finish
    few_shot: int = 2  # verified examples from the node's feedback put before each prompt; 0 disables
    few_shot_max_chars: int = 4000  # examples beyond this many characters in all are left out: room for the question
    security: SecurityConfig = field(default_factory=SecurityConfig)  # token and TLS, served and used to join
