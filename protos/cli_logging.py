"""Logging for the three commands, set up one way: a validated ``--log-level`` and grpc held quiet.

``--log-level`` takes one of :data:`LOG_LEVELS` (any case); anything else is refused by argparse with
the list, never a traceback. grpc's own Python loggers (and its C core, through ``GRPC_VERBOSITY``)
stay at WARNING, so ``debug`` shows DELLM's lines; ``trace`` is ``debug`` with grpc's included.
"""

from __future__ import annotations

import argparse
import logging
import os

LOG_LEVELS = ("trace", "debug", "info", "warning", "error")
NOISY_LOGGERS = ("grpc", "grpc._cython", "grpc.aio", "hpack", "asyncio")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_level(text: str) -> str:
    """argparse ``type`` for --log-level: a known level, lower-cased, or a clear error."""
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"unknown log level {text!r}; choose one of {', '.join(LOG_LEVELS)}")
    return level


def add_log_level_argument(parser: argparse.ArgumentParser, default: str = "info") -> None:
    parser.add_argument("--log-level", type=log_level, default=default, metavar="LEVEL",
                        help=f"{', '.join(LOG_LEVELS)} (default %(default)s; trace adds grpc's own debug lines)")


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` (one of LOG_LEVELS); grpc at WARNING unless the level is trace."""
    trace = level == "trace"
    logging.basicConfig(level=logging.DEBUG if trace else level.upper(), format=LOG_FORMAT, force=True)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if trace else logging.WARNING)
    if trace:
        os.environ.setdefault("GRPC_VERBOSITY", "DEBUG")  # grpc's core reads it when it is first imported
