"""Run a command inside a private network namespace where mDNS can be real but stays local.

Multicast must never leave this machine in tests and demos: the namespace has only its
own loopback, with multicast switched on and 224.0.0.0/4 routed to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

MARKER = "DELLM_PRIVATE_NETNS"  # set inside the namespace by in_private_netns
SETUP = "ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo"


def inside_private_netns() -> bool:
    return os.environ.get(MARKER) == "1"


def netns_unavailable_reason() -> str | None:
    """None when private namespaces can be made here, else why not."""
    missing = [tool for tool in ("unshare", "ip") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (util-linux, iproute2)"
    try:
        done = subprocess.run(["unshare", "-n", "sh", "-c", SETUP], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare -n failed: {exc}"
    if done.returncode != 0:
        return f"cannot create a network namespace here: {done.stderr.strip() or done.returncode}"
    return None


def in_private_netns(argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped to run in a new network namespace with multicast on its loopback."""
    return ["unshare", "-n", "sh", "-c", f'{SETUP} && {MARKER}=1 exec "$@"', "sh", *argv]
