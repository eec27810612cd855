"""Build and install llama-cpp-python portable (no AMX), then prove it from the build's own system info.

Run by ``make install`` inside the project's virtualenv::

    python scripts/build_llama.py --constraints constraints.txt [--simd auto|avx512|avx2|sse] [--force]

pip reuses a wheel it once built whatever ``CMAKE_ARGS`` say, so a machine that once built the
native (AMX) wheel would keep installing it. This script never asks pip's cache: it builds the wheel
with ``--no-cache-dir`` into ``<venv>/llama-wheels/<version>-<level>-<hash of the flags>/`` and
installs that file. A later run with the same flags reuses it; other flags build anew. After the
install it runs ``python -m dellm.node.llama_build`` in a child process, which exits non-zero when
the installed library reports AMX.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dellm.node.llama_build import (
    LLAMA_PACKAGE,
    SIMD_ENV,
    LlamaBuildError,
    cmake_args,
    read_cpu_flags,
    resolve_level,
)

PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]


class BuildFailure(RuntimeError):
    """The build cannot go on; the message is one line with the fix."""


def pinned_version(constraints: Path) -> str:
    try:
        text = constraints.read_text()
    except OSError as exc:
        raise BuildFailure(f"cannot read {constraints}: {exc}") from exc
    match = re.search(rf"^{re.escape(LLAMA_PACKAGE)}==(\S+)", text, re.M)
    if not match:
        raise BuildFailure(f"{constraints} pins no {LLAMA_PACKAGE}==VERSION")
    return match.group(1)


def find_compilers(env: dict[str, str]) -> tuple[str, str]:
    """The C and C++ compilers the build will use, or one line that says how to install them."""
    cc = env.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    cxx = env.get("CXX") or next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    if not cc or not shutil.which(cc) or not cxx or not shutil.which(cxx):
        raise BuildFailure(
            f"{LLAMA_PACKAGE} compiles llama.cpp from source and no C/C++ compiler was found "
            f"(CC={cc or 'none'}, CXX={cxx or 'none'}): install one (Debian/Ubuntu: "
            "`sudo apt-get install build-essential`; macOS: `xcode-select --install`) and run make again"
        )
    return cc, cxx


def installed_record(venv: Path) -> dict[str, str]:
    try:
        record = json.loads((venv / "llama-build.json").read_text())
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def build_wheel(version: str, args: str, wheel_dir: Path, log: Path) -> Path:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CMAKE_ARGS=args, FORCE_CMAKE="1")
    command = [*PIP, "wheel", "--no-deps", "--no-cache-dir", "--no-binary", LLAMA_PACKAGE,
               "-w", str(wheel_dir), f"{LLAMA_PACKAGE}=={version}"]
    print(f"building {LLAMA_PACKAGE} {version} with CMAKE_ARGS={args!r} (about 3-5 minutes on 2 cores; log: {log})",
          flush=True)
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise BuildFailure(f"building {LLAMA_PACKAGE} failed (exit {done.returncode}); the end of {log}:\n{tail}")
    wheels = sorted(wheel_dir.glob("llama_cpp_python-*.whl"))
    if not wheels:
        raise BuildFailure(f"pip reported success but wrote no wheel into {wheel_dir}")
    print(f"built {wheels[-1].name} in {time.monotonic() - started:.0f} s", flush=True)
    return wheels[-1]


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--constraints", type=Path, default=Path("constraints.txt"))
    parser.add_argument("--simd", default=os.environ.get(SIMD_ENV, "auto"),
                        help=f"auto (default, the best this CPU has), avx512, avx2 or sse; also ${SIMD_ENV}")
    parser.add_argument("--force", action="store_true", help="build again even when this build is installed")
    args = parser.parse_args(argv)

    venv = Path(sys.prefix)
    if sys.prefix == sys.base_prefix:
        raise BuildFailure(f"{sys.executable} is not a virtualenv: run this through `make install`")
    version = pinned_version(args.constraints)
    level = resolve_level(args.simd, read_cpu_flags())
    flags = cmake_args(level)
    wanted = {"version": version, "level": level, "cmake_args": flags}
    if args.force or installed_record(venv) != wanted:
        find_compilers(dict(os.environ))
        key = hashlib.sha256(flags.encode()).hexdigest()[:12]
        wheel_dir = venv / "llama-wheels" / f"{version}-{level}-{key}"
        wheels = sorted(wheel_dir.glob("llama_cpp_python-*.whl"))
        if args.force or not wheels:
            for stale in wheels:
                stale.unlink()
            wheels = [build_wheel(version, flags, wheel_dir, venv / "llama-build.log")]
        else:
            print(f"reusing {wheels[-1]} (built with the same flags)", flush=True)
        subprocess.run([*PIP, "install", "--quiet", "--force-reinstall", "--no-deps", str(wheels[-1])], check=True)
        subprocess.run([*PIP, "install", "--quiet", "-c", str(args.constraints), str(wheels[-1])], check=True)
        (venv / "llama-build.json").write_text(json.dumps(wanted) + "\n")
    else:
        print(f"{LLAMA_PACKAGE} {version} is installed at SIMD level {level}, built without AMX", flush=True)
    # The proof is the installed library's own word, in a child process (a faulting build kills only it).
    check = subprocess.run([sys.executable, "-m", "dellm.node.llama_build"], check=False)
    if check.returncode != 0:
        (venv / "llama-build.json").unlink(missing_ok=True)
        raise BuildFailure("the installed llama.cpp build failed its check (above)")
    return 0


def main() -> int:
    try:
        return run()
    except (BuildFailure, LlamaBuildError) as exc:
        print(f"build_llama: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"build_llama: {' '.join(map(str, exc.cmd))} failed with exit code {exc.returncode}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
