"""Create the project's virtualenv (``make`` runs this with the system ``python3``), or say why it can't.

    python3 scripts/make_venv.py .venv

Works the same on a Debian or Ubuntu Python marked externally-managed (PEP 668), pyenv and conda:
everything is installed into the virtualenv, never into the Python that created it. Each failure is
one line with the fix and exit code 2. Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MIN_PYTHON = (3, 11)


class VenvError(RuntimeError):
    """The virtualenv cannot be made; the message says how to fix it."""


def check_python(version: tuple[int, int] = (sys.version_info.major, sys.version_info.minor)) -> None:
    if version < MIN_PYTHON:
        raise VenvError(f"DELLM needs Python {'.'.join(map(str, MIN_PYTHON))} or newer, and {sys.executable} is "
                        f"{version[0]}.{version[1]}: run make with SYSTEM_PYTHON=python3.11 (or newer)")


_PROBE = ("import json, sys, sysconfig, pathlib; print(json.dumps([sys.prefix != sys.base_prefix, "
          "(pathlib.Path(sysconfig.get_path('stdlib')) / 'EXTERNALLY-MANAGED').is_file()]))")


def check_is_venv(python: Path) -> None:
    """Refuse a ``VENV`` that points at a Python which is not a virtualenv (pip would install into it)."""
    done = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, check=False)
    try:
        is_venv, managed = json.loads(done.stdout)
    except ValueError:
        raise VenvError(f"{python} does not run: remove {python.parent.parent} and run make again") from None
    if not is_venv:
        why = " and is marked externally-managed (PEP 668)" if managed else ""
        raise VenvError(f"{python} is not a virtualenv{why}, so make will not install into it: "
                        f"leave VENV unset (make uses .venv) or point it at a folder of your own")


def create(venv: Path) -> Path:
    """Make ``venv`` with pip in it (idempotent); return its python."""
    python = venv / "bin" / "python"
    if (venv / "pyvenv.cfg").is_file() and python.exists():
        check_is_venv(python)
        return python
    if venv.exists() and (not venv.is_dir() or any(venv.iterdir())):
        if (found := next((p for p in (python, venv / "bin" / "python3") if p.exists()), None)) is not None:
            check_is_venv(found)  # explains an externally-managed Python in particular
        raise VenvError(f"{venv} exists and is not a virtualenv (no pyvenv.cfg), so make will not install into it: "
                        f"leave VENV unset (make uses .venv) or point it at a new folder")
    check_python()
    done = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        if any("ensurepip" in line for line in detail):
            raise VenvError(f"{sys.executable} cannot make a virtualenv because ensurepip is missing: install it "
                            f"(Debian/Ubuntu: `sudo apt-get install python3-venv`) and run make again")
        raise VenvError(f"`{sys.executable} -m venv {venv}` failed: {detail[-1] if detail else 'no output'}")
    print(f"created the project virtualenv {venv} (put {venv.resolve() / 'bin'} on PATH to use dellm directly)")
    return python


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: make_venv.py VENV_DIR", file=sys.stderr)
        return 2
    try:
        create(Path(args[0]))
    except VenvError as exc:
        print(f"make_venv: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
