"""What every benchmark script writes the same way: the machine line and the JSON report."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from node.server import hardware_summary


def machine() -> str:
    """The machine a figure was measured on: cores, memory, platform and Python."""
    return f"{hardware_summary()}, Python {platform.python_version()}"


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
