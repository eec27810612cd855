"""The install steps `make` runs: the project virtualenv and the portable llama.cpp build's guards."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from dellm.node.models import default_cache_dir
from tests.conftest import REPO

SYSTEM_PYTHON = Path("/usr/bin/python3")


def make_venv(target: Path, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, str(REPO / "scripts" / "make_venv.py"), str(target)], capture_output=True,
                          text=True, timeout=300, check=False)


def test_refuses_a_folder_that_is_not_a_virtualenv(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    done = make_venv(tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"make_venv: {tmp_path} exists and is not a virtualenv (no pyvenv.cfg), so make "
                                   "will not install into it: leave VENV unset (make uses .venv) or point it at a "
                                   "new folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written


def test_refuses_an_externally_managed_python(tmp_path: Path) -> None:
    """VENV pointing at a Debian/Ubuntu system Python (PEP 668) gets one line, and nothing is installed."""
    real = SYSTEM_PYTHON.resolve()
    marker = Path(sysconfig.get_path("stdlib", vars={"installed_base": "/usr", "base": "/usr"})) / "EXTERNALLY-MANAGED"
    if not real.exists() or not marker.exists():
        pytest.skip(f"no externally-managed system Python here ({SYSTEM_PYTHON}, {marker})")
    fake = tmp_path / "system"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "python3").symlink_to(real)
    done = make_venv(fake)
    assert done.returncode == 2
    assert "is not a virtualenv and is marked externally-managed (PEP 668)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (fake / "pyvenv.cfg").exists()


@pytest.mark.slow
def test_makes_a_virtualenv_once(tmp_path: Path) -> None:
    target = tmp_path / "venv"
    first = make_venv(target)
    assert first.returncode == 0, first.stderr
    assert (target / "pyvenv.cfg").is_file() and (target / "bin" / "python").exists()
    probe = subprocess.run([str(target / "bin" / "python"), "-c", "import sys; print(sys.prefix != sys.base_prefix)"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "True"
    again = make_venv(target)
    assert again.returncode == 0 and again.stdout == ""  # already there: nothing to do


def test_a_missing_compiler_is_one_line_with_the_fix(tmp_path: Path) -> None:
    if sys.prefix == sys.base_prefix:
        pytest.skip("the build script runs inside the project virtualenv")
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc"), "CXX": str(tmp_path / "no-such-c++")}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "build_llama.py"), "--force", "--constraints",
                           str(REPO / "constraints.txt")], capture_output=True, text=True, env=env, timeout=60,
                          check=False)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("build_llama: llama-cpp-python compiles llama.cpp from source and no C/C++ compiler")
    assert "apt-get install build-essential" in line


def test_an_unknown_simd_level_is_refused() -> None:
    if sys.prefix == sys.base_prefix:
        pytest.skip("the build script runs inside the project virtualenv")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "build_llama.py"), "--simd", "avx1024",
                           "--constraints", str(REPO / "constraints.txt")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and "unknown SIMD level 'avx1024'" in done.stderr


def test_constraints_pin_what_setup_cfg_ranges_allow() -> None:
    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["llama-cpp-python"].startswith("0.3.")
    assert pins["torch"].startswith("2.13.0")


def test_every_package_folder_is_installed() -> None:
    """setup.cfg lists the packages under their dellm.* names: a folder left out would be missing once installed."""
    import configparser

    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    folders = {"dellm." + ".".join(p.parent.relative_to(REPO).parts)
               for top in ("protos", "coordinator", "node", "client") for p in (REPO / top).rglob("__init__.py")}
    assert folders == listed


@pytest.mark.slow
def test_the_base_install_is_the_client_and_names_each_missing_extra(tmp_path: Path) -> None:
    """`pip install dellm` compiles nothing; each command that needs an extra says which one."""
    venv = tmp_path / "client"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    models = default_cache_dir()
    install = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "-c",
                              str(REPO / "constraints.txt"), str(REPO)], capture_output=True, text=True, timeout=600,
                             cwd=tmp_path, check=False)
    assert install.returncode == 0, install.stderr[-2000:]
    installed = subprocess.run([str(bin_dir / "python"), "-m", "pip", "list", "--format=freeze"],
                               capture_output=True, text=True, check=True).stdout.lower()
    assert "dellm==" in installed
    assert not any(heavy in installed for heavy in ("llama", "torch", "zeroconf", "redis=="))

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path, env={"PATH": os.environ["PATH"], "HOME": str(tmp_path),
                                                 "DELLM_CACHE_DIR": str(models)}, check=False)

    assert run("dellm", "--version").stdout.startswith("dellm ")
    assert run("dellm-node", "--version").stdout.startswith("dellm-node ")
    assert run("dellm-coordinator", "--version").stdout.startswith("dellm-coordinator ")
    node = run("dellm-node", "--backend", "scripted")
    assert node.returncode == 2 and "pip install 'dellm[lan]'" in node.stderr and "Traceback" not in node.stderr
    coordinator = run("dellm-coordinator", "--synth-model", "none")
    assert coordinator.returncode == 2 and "pip install 'dellm[lan]'" in coordinator.stderr
    redis = run("dellm-coordinator", "--synth-model", "none", "--discovery", "none", "--registry", "redis://127.0.0.1:1")
    assert redis.returncode == 2 and "pip install 'dellm[redis]'" in redis.stderr
    llama = run("dellm-coordinator", "--discovery", "none", "--registry", str(tmp_path / "r.sqlite3"))
    pulled = (models / "qwen2.5-coder-0.5b-instruct.gguf").is_file()
    assert llama.returncode != 0
    assert ("llama-cpp-python is not installed" if pulled else "dellm models pull") in llama.stderr
    assert "Traceback" not in coordinator.stderr + redis.stderr + llama.stderr
