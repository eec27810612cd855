"""The wire contract: ``dellm.proto`` (package ``dellm.v1``), its generated code, and the release version."""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version


def version_line(prog: str) -> str:
    """What ``--version`` prints for each command: ``dellm 0.1.0``."""
    try:
        release = version("dellm")
    except PackageNotFoundError:  # run from a checkout that was never installed
        release = "unknown (not installed)"
    return f"{prog} {release}"


class MissingExtraError(ImportError):
    """A feature needs an optional part of DELLM that is not installed; the message names the extra."""


def import_extra(module: str, extra: str, purpose: str) -> None:
    """Import ``module`` now, or raise MissingExtraError: "<purpose> needs pip install 'dellm[<extra>]'"."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{purpose} needs the {extra} extra ({module} is not installed): "
                                f"pip install 'dellm[{extra}]'") from exc


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Shell completion with argcomplete when it is installed (``eval "$(register-python-argcomplete dellm)"``);
    a no-op otherwise, and whenever the shell is not asking for completions."""
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)
