"""The portable llama.cpp build: flags chosen per CPU, AMX never on, the installed build's own word."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dellm.node.llama_build import (
    SIMD_LEVELS,
    BuildInfo,
    LlamaBuildError,
    amx_features,
    best_simd_level,
    check_build,
    cmake_args,
    install_command,
    parse_cpu_flags,
    parse_system_info,
    resolve_level,
)
from tests.conftest import unavailable

AVX2 = {"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512vbmi"}
SAPPHIRE_RAPIDS = AVX512 | {"amx_tile", "amx_int8", "amx_bf16", "avx_vnni"}


@pytest.mark.parametrize(("flags", "level"), [
    (SAPPHIRE_RAPIDS, "avx512"),
    (AVX512, "avx512"),
    (AVX512 - {"avx512_bf16"}, "avx2"),  # an AVX-512 build needs every extension it is compiled with
    (AVX2, "avx2"),
    ({"sse4_2", "avx"}, "sse"),
    (set(), "avx2"),  # nothing known (not Linux): the portable default
])
def test_best_level_for_the_cpu(flags: set[str], level: str) -> None:
    assert best_simd_level(flags) == level


@pytest.mark.parametrize("level", SIMD_LEVELS)
def test_no_level_ever_builds_native_or_amx(level: str) -> None:
    args = cmake_args(level, "x86_64").split()
    assert "-DGGML_NATIVE=OFF" in args
    assert {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"} <= set(args)
    assert not [a for a in args if "AMX" in a and a.endswith("=ON")]


def test_avx512_level_keeps_the_fast_paths_and_avx2_none_of_them() -> None:
    assert "-DGGML_AVX512_VNNI=ON" in cmake_args("avx512", "x86_64")
    assert "AVX512" not in cmake_args("avx2", "x86_64") and "-DGGML_AVX2=ON" in cmake_args("avx2", "x86_64")


def test_other_architectures_keep_llama_cpp_defaults() -> None:
    assert cmake_args("avx2", "aarch64") == ""


def test_resolve_level() -> None:
    assert resolve_level("auto", AVX2) == "avx2"
    assert resolve_level(None, SAPPHIRE_RAPIDS) == "avx512"
    assert resolve_level(" AVX2 ", SAPPHIRE_RAPIDS) == "avx2"
    with pytest.raises(LlamaBuildError, match="unknown SIMD level 'avx1024'"):
        resolve_level("avx1024", AVX2)


def test_parse_cpu_flags() -> None:
    text = "processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu sse4_2 avx2 amx_tile\n\nprocessor\t: 1\nflags : x\n"
    assert parse_cpu_flags(text) == {"fpu", "sse4_2", "avx2", "amx_tile"}
    assert parse_cpu_flags("") == frozenset()


AMX_INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
            "AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |")
SAFE_INFO = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 0 | LLAMAFILE = 1 |"


def test_parse_system_info_and_amx() -> None:
    assert parse_system_info(SAFE_INFO) == {"SSE3": True, "AVX": True, "AVX2": True, "AVX512": False,
                                            "LLAMAFILE": True}
    assert amx_features(parse_system_info(AMX_INFO)) == ["AMX_INT8"]
    assert amx_features(parse_system_info(SAFE_INFO)) == []


def test_check_build_refuses_amx_with_the_reinstall_line(tmp_path: Path) -> None:
    check_build(BuildInfo("0.3.36", tmp_path, SAFE_INFO))
    with pytest.raises(LlamaBuildError) as caught:
        check_build(BuildInfo("0.3.36", tmp_path, AMX_INFO))
    message = str(caught.value)
    assert "AMX_INT8" in message and install_command("0.3.36") in message and "\n" not in message
    assert "--no-cache-dir" in install_command("0.3.36")  # pip's cached native wheel is never reused


def test_build_identity_changes_when_the_library_is_replaced(tmp_path: Path) -> None:
    library = tmp_path / "libllama.so"
    library.write_bytes(b"one")
    before = BuildInfo("0.3.36", library, SAFE_INFO).identity
    library.write_bytes(b"three")
    assert BuildInfo("0.3.36", library, SAFE_INFO).identity != before


def test_the_installed_build_reports_no_amx() -> None:
    """The proof the issue asks for: the library in this environment, by its own system info."""
    try:
        import llama_cpp
    except ImportError as exc:
        unavailable(f"llama-cpp-python is not installed: {exc}")
    done = subprocess.run([sys.executable, "-m", "dellm.node.llama_build"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    info = llama_cpp.llama_print_system_info().decode()
    assert parse_system_info(info), info  # the format is still one we read
    assert amx_features(parse_system_info(info)) == [], info
    assert "no AMX in this build" in done.stdout
