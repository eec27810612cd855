"""System tools some gateway tests run for real (Debian's chromium and prometheus packages).

Missing here, such a test is skipped with the reason; under its DELLM_REQUIRE_* variable (set by
.ci/run) it fails instead, so that CI never passes by skipping them.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(names: tuple[str, ...], package: str, variable: str) -> str:
    """The path of the first of ``names`` on PATH, or skip (fail when ``variable`` is 1)."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    reason = f"{' or '.join(names)} is not installed (apt-get install {package})"
    if os.environ.get(variable) == "1":
        pytest.fail(f"{reason}, and {variable}=1", pytrace=False)
    pytest.skip(reason)


def chromium() -> str:
    return require_tool(("chromium", "chromium-browser", "google-chrome"), "chromium", "DELLM_REQUIRE_BROWSER")


def promtool() -> str:
    return require_tool(("promtool",), "prometheus", "DELLM_REQUIRE_PROMTOOL")
