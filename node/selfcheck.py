"""The generation check: can this llama.cpp build generate tokens from this model on this CPU?

A llama.cpp build compiled for instructions the CPU cannot run (AMX on a virtualised host, AVX-512
copied to an older machine) dies on the first matrix multiply with SIGSEGV or SIGILL. So before a
node advertises or joins, and in ``dellm doctor``, a child process loads the model with the node's
own backend and generates a few greedy tokens. A crash kills only the child; the parent turns it
into one line ("the llama.cpp build crashed with signal 11 (SIGSEGV) on this CPU: reinstall ...").

A result is cached per model file (path, size, mtime) and build (version, library file, size,
mtime) in ``selfcheck.json`` beside the model cache, so a node restart costs nothing while neither
changes, and a rebuilt library or a replaced model is checked again.

``python -m dellm.node.selfcheck --model PATH [--threads N] [--tokens N]`` is the child: it prints
one JSON line ``{"tokens": N, "seconds": S}`` and exits 0, or prints the error and exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dellm.node.llama_build import LlamaBuildError, install_command, installed_build
from dellm.node.models import default_cache_dir

logger = logging.getLogger(__name__)

CHECK_TOKENS = 8  # enough to run the model's matrix multiplies several times over
CHECK_TIMEOUT_S = 300.0  # loading a 1.5B model on a busy 2-core machine takes well under this
CHECK_PROMPT = "Count from one to ten: one, two,"
CACHE_FILE = "selfcheck.json"


class GenerationCheckError(RuntimeError):
    """The llama.cpp backend cannot generate on this machine; the message is one line with the fix."""


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    model: str
    tokens: int = 0
    seconds: float = 0.0
    message: str = ""  # why it failed, one line with the fix; empty when ok
    cached: bool = False

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def run_generation_check(
    model_path: Path,
    *,
    threads: int | None = None,
    tokens: int = CHECK_TOKENS,
    timeout: float = CHECK_TIMEOUT_S,
    build_version: str = "",
) -> CheckResult:
    """Generate ``tokens`` tokens from ``model_path`` in a child process; never raises for a crash."""
    command = [sys.executable, "-m", "dellm.node.selfcheck", "--model", str(model_path), "--tokens", str(tokens)]
    if threads:
        command += ["--threads", str(threads)]
    name = model_path.name
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return CheckResult(False, name, message=f"the llama.cpp build did not generate {tokens} tokens from {name} "
                                                f"within {timeout:.0f} s")
    if done.returncode < 0:
        number = -done.returncode
        fix = install_command(build_version or "VERSION")
        return CheckResult(False, name, message=f"the llama.cpp build crashed with signal {number} "
                                                f"({_signal_name(number)}) on this CPU while generating from {name}: "
                                                f"reinstall it portable with `{fix}` (or `make llama`)")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return CheckResult(False, name, message=f"the llama.cpp backend could not generate from {name}: {detail}")
    report = json.loads(lines[-1])
    if report["tokens"] <= 0:
        return CheckResult(False, name, message=f"the llama.cpp backend generated no tokens from {name}")
    return CheckResult(True, name, tokens=int(report["tokens"]), seconds=float(report["seconds"]))


def _cache_key(model_path: Path, build_identity: str) -> str:
    st = model_path.stat()
    return f"{model_path.resolve()}:{st.st_size}:{st.st_mtime_ns}|{build_identity}"


def _read_cache(cache_file: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(cache_file.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(cache_file: Path, data: dict[str, dict[str, object]]) -> None:
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, cache_file)
    except OSError as exc:  # a read-only cache only means the check runs again next time
        logger.warning("could not write %s: %s", cache_file, exc)


def checked_generation(
    model_path: Path,
    cache_file: Path,
    *,
    threads: int | None = None,
    use_cache: bool = True,
) -> CheckResult:
    """The generation check for this model and the installed build, from the cache when it has run.

    A build that reports AMX fails without running (see :func:`~dellm.node.llama_build.check_build`).
    """
    from dellm.node.llama_build import check_build

    try:
        build = installed_build()
        check_build(build)
    except LlamaBuildError as exc:
        return CheckResult(False, model_path.name, message=str(exc))
    key = _cache_key(model_path, build.identity)
    cache = _read_cache(cache_file)
    if use_cache and isinstance(entry := cache.get(key), dict):
        try:
            return CheckResult(**{**entry, "cached": True})  # type: ignore[arg-type]
        except TypeError:  # an entry from another version of this module: check again
            pass
    logger.info("checking that llama.cpp %s generates from %s on this CPU", build.version, model_path.name)
    result = run_generation_check(model_path, threads=threads, build_version=build.version)
    cache[key] = {k: v for k, v in asdict(result).items() if k != "cached"}
    _write_cache(cache_file, cache)
    return result


def require_generation(model_path: Path, *, threads: int | None = None) -> CheckResult:
    """The check a node (and a coordinator's own model) passes before it serves; raises when it fails."""
    result = checked_generation(model_path, default_cache_dir() / CACHE_FILE, threads=threads)
    if not result.ok:
        raise GenerationCheckError(result.message)
    logger.info("generation check passed for %s: %d tokens at %.1f tokens/s%s", model_path.name, result.tokens,
                result.tokens_per_s, " (cached)" if result.cached else "")
    return result


def _child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m dellm.node.selfcheck")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=CHECK_TOKENS)
    args = parser.parse_args(argv)
    from dellm.node.backends.base import BackendError, GenerationRequest
    from dellm.node.backends.llama_cpp import LlamaCppBackend

    try:
        backend = LlamaCppBackend(args.model, model_name=args.model.name, instruct=False,
                                  n_threads=args.threads or os.cpu_count(), n_ctx=256)
        started = time.monotonic()
        pieces = list(backend.generate(GenerationRequest(prompt=CHECK_PROMPT, max_tokens=args.tokens),
                                       threading.Event()))
        seconds = time.monotonic() - started
        backend.close()
    except BackendError as exc:
        print(exc, file=sys.stderr)
        return 1
    tokens = sum(len(p.logprobs) for p in pieces) or sum(1 for p in pieces if p.text)
    print(json.dumps({"tokens": tokens, "seconds": round(seconds, 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
