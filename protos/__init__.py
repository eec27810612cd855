"""The wire contract: ``dellm.proto`` (package ``dellm.v1``), its generated code, and the release version."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def version_line(prog: str) -> str:
    """What ``--version`` prints for each command: ``dellm 0.1.0``."""
    try:
        release = version("dellm")
    except PackageNotFoundError:  # run from a checkout that was never installed
        release = "unknown (not installed)"
    return f"{prog} {release}"
