"""``--config FILE.toml`` for the long-running commands (dellm-node, dellm-coordinator): the file sets
flag defaults, and flags given on the command line override it.

Keys are the long flag names without the dashes, with ``-`` or ``_`` (``listen = "0.0.0.0:50050"``,
``synth-model = "none"``, ``advertise = false``). An unknown key, a value of the wrong type or outside a
flag's choices is refused with the file, the key and what it takes, never ignored.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any


class ConfigFileError(ValueError):
    """The config file cannot be read or holds a key or value no flag takes."""


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, metavar="FILE.toml",
                        help="read flag values from a TOML file (keys are flag names: listen = \"HOST:PORT\"); "
                             "flags given here override it")


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Long flag name without dashes (and its dest) -> action, for every flag a file may set."""
    flags: dict[str, argparse.Action] = {}
    for action in parser._actions:  # argparse has no public way to list them
        if action.dest in ("help", "version", "config") or not action.option_strings:
            continue
        for option in action.option_strings:
            if option.startswith("--") and not option.startswith("--no-"):
                flags[option[2:]] = action
        flags[action.dest] = action
    return flags


def _value(path: Path, key: str, action: argparse.Action, value: Any) -> Any:
    if isinstance(value, dict | list):
        raise ConfigFileError(f"{path}: {key} takes one value, not a {type(value).__name__}")
    if isinstance(action, argparse.BooleanOptionalAction) or action.nargs == 0:
        if not isinstance(value, bool):
            raise ConfigFileError(f"{path}: {key} takes true or false, got {value!r}")
        return value
    if isinstance(value, bool):
        raise ConfigFileError(f"{path}: {key} takes a value, not {str(value).lower()}")
    converter = action.type if callable(action.type) else str
    try:
        converted = converter(value if converter in (int, float) and not isinstance(value, str) else str(value))
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        raise ConfigFileError(f"{path}: {key} = {value!r}: {exc}") from exc
    if converter is int and isinstance(value, float):
        raise ConfigFileError(f"{path}: {key} takes a whole number, got {value!r}")
    if action.choices is not None and converted not in action.choices:
        raise ConfigFileError(f"{path}: {key} takes one of {', '.join(map(str, action.choices))}, got {value!r}")
    return converted


def config_defaults(parser: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    """The flag defaults ``path`` sets, by dest; ConfigFileError saying what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigFileError(f"cannot read the config file {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"{path} is not valid TOML: {exc}") from exc
    flags = _flags(parser)
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        action = flags.get(key) or flags.get(key.replace("_", "-"))
        if action is None:
            raise ConfigFileError(f"{path}: unknown key {key!r}; keys are flag names, e.g. "
                                  f"{', '.join(sorted(k for k in flags if '_' not in k)[:6])} ...")
        defaults[action.dest] = _value(path, key, action, value)
    return defaults


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; with ``--config FILE``, the file's values first and the flags over them.
    A bad file ends the command through ``parser.error`` (exit 2, the reason on stderr)."""
    first = parser.parse_args(argv)
    if getattr(first, "config", None) is None:
        return first
    try:
        parser.set_defaults(**config_defaults(parser, first.config))
    except ConfigFileError as exc:
        parser.error(str(exc))
    return parser.parse_args(argv)
