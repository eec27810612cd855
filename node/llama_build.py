"""The llama.cpp build: the CMake flags DELLM compiles it with, and what the installed build can do.

llama-cpp-python compiles llama.cpp from source, by default with ``GGML_NATIVE=ON``: the build then
uses every instruction set the building CPU advertises, AMX included (Sapphire Rapids and later
Xeons). On virtualised hosts those AMX kernels fault on the first matrix multiply
(ggml-org/llama.cpp#20824), which kills the node on its first token. DELLM therefore builds with
``GGML_NATIVE=OFF``, AMX always off, and an explicit SIMD level:

- ``avx512``: AVX-512 F/BW/DQ/VL with VNNI, BF16 and VBMI, on CPUs that have all of them;
- ``avx2``: AVX2, FMA, F16C and BMI2 (every x86-64 CPU since 2013-2015);
- ``sse``: SSE4.2 only, for older x86-64 CPUs.

``auto`` picks the best level the building CPU has (pip builds on the machine that runs it); a
wheel to copy to other machines should be built with ``DELLM_LLAMA_SIMD=avx2``. On other
architectures (arm64) there is no AMX to avoid and llama.cpp's own defaults are kept.

The installed build is checked by its own ``llama_print_system_info()``: :func:`check_build`
refuses one that reports AMX, with the one command that reinstalls it portable.

``python -m dellm.node.llama_build`` prints the system info and exits 1 for an unsafe build;
``--cmake-args [LEVEL]`` prints the flags for a level (default: auto for this CPU).
"""

from __future__ import annotations

import platform
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

LLAMA_PACKAGE = "llama-cpp-python"
SIMD_LEVELS = ("avx512", "avx2", "sse")
SIMD_ENV = "DELLM_LLAMA_SIMD"  # auto | avx512 | avx2 | sse

_NO_AMX = ("-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF")
_AVX2 = ("-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON")
_AVX512 = ("-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX512_BF16=ON", "-DGGML_AVX512_VBMI=ON")
_SSE = ("-DGGML_SSE42=ON", "-DGGML_AVX=OFF", "-DGGML_AVX2=OFF", "-DGGML_FMA=OFF", "-DGGML_F16C=OFF",
        "-DGGML_BMI2=OFF")

_LEVEL_ARGS: Mapping[str, tuple[str, ...]] = {
    "avx512": ("-DGGML_NATIVE=OFF", *_NO_AMX, *_AVX2, *_AVX512),
    "avx2": ("-DGGML_NATIVE=OFF", *_NO_AMX, *_AVX2),
    "sse": ("-DGGML_NATIVE=OFF", *_NO_AMX, *_SSE),
}

# The /proc/cpuinfo flags each level compiles for: a build at that level runs only where all exist.
_LEVEL_NEEDS: Mapping[str, frozenset[str]] = {
    "avx2": frozenset({"avx", "avx2", "fma", "f16c", "bmi2"}),
    "avx512": frozenset({"avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512dq", "avx512vl",
                         "avx512_vnni", "avx512_bf16", "avx512vbmi"}),
    "sse": frozenset({"sse4_2"}),
}

# CPU flags worth showing (doctor): what the SIMD levels use, and the AMX ones that must stay unused.
RELEVANT_CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512dq",
                      "avx512vl", "avx512_vnni", "avx512_bf16", "avx512vbmi", "avx_vnni", "amx_tile", "amx_int8",
                      "amx_bf16")


class LlamaBuildError(RuntimeError):
    """The installed llama.cpp build is missing or unsafe on this machine; the message says how to fix it."""


def is_x86_64(machine: str | None = None) -> bool:
    return (machine or platform.machine()).lower() in {"x86_64", "amd64", "x64"}


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The ``flags`` of the first processor in a /proc/cpuinfo text (empty when there is none)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def read_cpu_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    try:
        return parse_cpu_flags(path.read_text(errors="replace"))
    except OSError:  # not Linux: no flags known, so only the portable levels are chosen
        return frozenset()


def best_simd_level(flags: Iterable[str]) -> str:
    """The fastest level whose instructions the CPU has all of; ``avx2`` when nothing is known."""
    have = frozenset(flags)
    if not have:
        return "avx2"
    return next((level for level in SIMD_LEVELS if _LEVEL_NEEDS[level] <= have), "sse")


def resolve_level(requested: str | None, flags: Iterable[str]) -> str:
    """``auto`` (or nothing) becomes the best level for ``flags``; anything else must be a known level."""
    level = (requested or "auto").strip().lower()
    if level == "auto":
        return best_simd_level(flags)
    if level not in _LEVEL_ARGS:
        raise LlamaBuildError(f"unknown SIMD level {requested!r} in {SIMD_ENV}: use auto, {', '.join(SIMD_LEVELS)}")
    return level


def cmake_args(level: str, machine: str | None = None) -> str:
    """The CMAKE_ARGS for a level; empty on non-x86 machines, whose llama.cpp defaults have no AMX."""
    if not is_x86_64(machine):
        return ""
    return " ".join(_LEVEL_ARGS[level])


def install_command(version: str, level: str = "avx2") -> str:
    """One line that reinstalls llama-cpp-python portable, bypassing pip's cache of a native wheel."""
    return (f'CMAKE_ARGS="{cmake_args(level, "x86_64")}" pip install --no-cache-dir --force-reinstall '
            f"--no-deps {LLAMA_PACKAGE}=={version}")


def parse_system_info(info: str) -> dict[str, bool]:
    """``llama_print_system_info()`` ("CPU : SSE3 = 1 | AVX = 1 | ...") as feature -> on."""
    return {name: value != "0" for name, value in re.findall(r"([A-Z][A-Z0-9_]*) = (\d+)", info)}


def amx_features(features: Mapping[str, bool]) -> list[str]:
    return sorted(name for name, on in features.items() if on and name.startswith("AMX"))


@dataclass(frozen=True)
class BuildInfo:
    """What the installed llama-cpp-python is: version, library file and llama.cpp's own system info."""

    version: str
    library: Path
    system_info: str

    @property
    def features(self) -> dict[str, bool]:
        return parse_system_info(self.system_info)

    @property
    def identity(self) -> str:
        """Changes whenever the library is rebuilt or replaced: keys the node's generation check."""
        try:
            st = self.library.stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "?"
        return f"{self.version}:{self.library}:{stamp}"


def installed_build() -> BuildInfo:
    """Import llama_cpp and read its system info; LlamaBuildError names the extra when it is absent."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise LlamaBuildError(
            f"llama-cpp-python is not installed ({exc}): run `make install`, or install the node extra "
            "portable as the README shows (pip install 'dellm[node]' with its CMAKE_ARGS)"
        ) from exc
    raw = llama_cpp.llama_print_system_info()
    info = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    library = _library_path(Path(llama_cpp.__file__).parent)
    return BuildInfo(version=str(getattr(llama_cpp, "__version__", "?")), library=library, system_info=info.strip())


def _library_path(package_dir: Path) -> Path:
    candidates = sorted((package_dir / "lib").glob("libllama*")) + sorted(package_dir.glob("libllama*"))
    return candidates[0] if candidates else package_dir


def check_build(build: BuildInfo) -> None:
    """Refuse a build that reports AMX: it faults on many virtualised CPUs, whatever this one is."""
    if amx := amx_features(build.features):
        raise LlamaBuildError(
            f"the installed llama.cpp build ({LLAMA_PACKAGE} {build.version}) was compiled with "
            f"{', '.join(amx)}, which faults on many virtualised CPUs; reinstall it portable: "
            f"{install_command(build.version)}"
        )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--cmake-args"]:
        try:
            level = resolve_level(args[1] if len(args) > 1 else None, read_cpu_flags())
        except LlamaBuildError as exc:
            print(f"llama_build: {exc}", file=sys.stderr)
            return 2
        print(cmake_args(level))
        return 0
    try:
        build = installed_build()
        print(f"{LLAMA_PACKAGE} {build.version}: {build.system_info}")
        check_build(build)
    except LlamaBuildError as exc:
        print(f"llama_build: {exc}", file=sys.stderr)
        return 1
    print("no AMX in this build")
    return 0


if __name__ == "__main__":
    sys.exit(main())
