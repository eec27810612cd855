"""``dellm doctor``: can this machine serve? One finding per line, and an exit code that says so.

It looks at, in order: the Python, the CPU flags that matter, llama.cpp's build (its own system
info: AMX must be off), the pulled models (sha256), a real generation of a few tokens from the
smallest pulled model (in a child process, so a crashing build is reported, never fatal), whether
mDNS can be used here, and whether a coordinator answers at ``--coordinator``.

A finding is ``ok``, ``info``, ``warn`` (works, with a caveat) or ``fail`` (cannot serve until
fixed). The machine can serve when nothing failed: then ``dellm doctor`` exits 0, else 1.
"""

from __future__ import annotations

import asyncio
import json
import platform
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from dellm.client.api import ClientConfig, DellmClient
from dellm.client.errors import DellmError
from dellm.node.llama_build import (
    RELEVANT_CPU_FLAGS,
    LlamaBuildError,
    check_build,
    installed_build,
    read_cpu_flags,
)
from dellm.node.models import CATALOGUE, ModelError, ModelSpec, cached_path, resolve_model
from dellm.protos.security import SecurityConfig

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"


@dataclass(frozen=True)
class Finding:
    topic: str  # python | cpu | llama.cpp | model | generation | mdns | coordinator
    status: str  # ok | info | warn | fail
    text: str


@dataclass(frozen=True)
class DoctorOptions:
    coordinator: str
    coordinator_explicit: bool  # given by flag or environment: then an unreachable one is a failure
    security: SecurityConfig
    cache_dir: Path | None = None
    threads: int | None = None


def check_python() -> list[Finding]:
    version = platform.python_version()
    in_venv = sys.prefix != sys.base_prefix
    where = f"{sys.executable} ({'virtualenv' if in_venv else 'not a virtualenv'})"
    return [Finding("python", OK, f"{version} at {where}")]


def check_cpu(flags: frozenset[str]) -> list[Finding]:
    model = _cpu_model()
    shown = " ".join(f for f in RELEVANT_CPU_FLAGS if f in flags) or "none known"
    amx = [f for f in flags if f.startswith("amx")]
    note = ("; AMX is present, and DELLM's llama.cpp build keeps it off (it faults on virtualised hosts)"
            if amx else "; no AMX")
    return [Finding("cpu", INFO, f"{platform.machine()} {model}: {shown}{note}")]


def _cpu_model(path: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def check_llama() -> list[Finding]:
    try:
        build = installed_build()
    except LlamaBuildError as exc:
        return [Finding("llama.cpp", FAIL, str(exc))]
    try:
        check_build(build)
    except LlamaBuildError as exc:
        return [Finding("llama.cpp", FAIL, str(exc))]
    simd = [name for name, on in build.features.items() if on and name.startswith(("AVX", "FMA", "F16C", "SSE"))]
    return [Finding("llama.cpp", OK, f"llama-cpp-python {build.version}, no AMX ({' '.join(simd) or 'no SIMD'}); "
                                     f"system info: {build.system_info}")]


def check_models(cache_dir: Path | None) -> tuple[list[Finding], list[tuple[ModelSpec, Path]]]:
    """A finding per catalogue model, and the verified ones, smallest first."""
    findings, verified = [], []
    for spec in CATALOGUE.values():
        path = cached_path(spec, cache_dir)
        if not path.is_file():
            findings.append(Finding("model", INFO, f"{spec.name}: not pulled (`dellm models pull {spec.name}`)"))
            continue
        try:
            resolve_model(spec.name, cache_dir)  # size and sha256 (rehashed whenever the file changed)
        except ModelError as exc:
            findings.append(Finding("model", FAIL, f"{spec.name}: {exc}; run `dellm models rm {spec.name}` and "
                                                   f"pull it again"))
            continue
        findings.append(Finding("model", OK, f"{spec.name}: {path}, sha256 matches"))
        verified.append((spec, path))
    if not verified and not any(f.status == FAIL for f in findings):
        findings.append(Finding("model", FAIL, "no model is pulled: run `dellm models pull "
                                               "qwen2.5-coder-0.5b-instruct` (491 MB)"))
    return findings, sorted(verified, key=lambda item: item[0].size)


def check_generation(models: list[tuple[ModelSpec, Path]], cache_dir: Path | None,
                     threads: int | None) -> list[Finding]:
    from dellm.node.models import default_cache_dir
    from dellm.node.selfcheck import CACHE_FILE, checked_generation

    if not models:
        return [Finding("generation", FAIL, "skipped: no verified model to generate from")]
    spec, path = models[0]
    result = checked_generation(path, (cache_dir or default_cache_dir()) / CACHE_FILE, threads=threads,
                                use_cache=False)
    if not result.ok:
        return [Finding("generation", FAIL, result.message)]
    return [Finding("generation", OK, f"{spec.name}: {result.tokens} tokens in {result.seconds:.2f} s "
                                      f"({result.tokens_per_s:.1f} tokens/s), in a child process")]


def _multicast_interfaces(net: Path = Path("/sys/class/net")) -> list[str]:
    names = []
    for iface in sorted(net.glob("*")) if net.is_dir() else []:
        try:
            flags = int((iface / "flags").read_text().strip(), 16)
        except (OSError, ValueError):
            continue
        if iface.name != "lo" and flags & 0x1 and flags & 0x1000:  # IFF_UP and IFF_MULTICAST
            names.append(iface.name)
    return names


def check_mdns() -> list[Finding]:
    from dellm.client.netns import netns_unavailable_reason

    try:
        import zeroconf  # noqa: F401
    except ImportError:
        return [Finding("mdns", WARN, "zeroconf is not installed, so LAN discovery is off (install "
                                      "`dellm[lan]`); nodes can still join by address with --coordinator")]
    interfaces = _multicast_interfaces()
    netns = netns_unavailable_reason()
    parts = [f"multicast interfaces: {', '.join(interfaces)}" if interfaces else "no multicast interface but loopback",
             "private network namespaces can be made (make demo-lan)" if netns is None
             else f"no private network namespaces ({netns})"]
    status = OK if interfaces or netns is None else WARN
    return [Finding("mdns", status, "zeroconf installed; " + "; ".join(parts))]


async def _coordinator_nodes(address: str, security: SecurityConfig) -> int:
    config = ClientConfig(unary_timeout_s=3.0, security=security)
    async with DellmClient(address, config) as client:
        return len(await client.nodes())


def check_coordinator(options: DoctorOptions) -> list[Finding]:
    try:
        count = asyncio.run(_coordinator_nodes(options.coordinator, options.security))
    except DellmError as exc:
        status = FAIL if options.coordinator_explicit else WARN
        hint = "" if options.coordinator_explicit else " (pass --coordinator HOST:PORT to check yours)"
        return [Finding("coordinator", status, f"{options.coordinator} did not answer: {exc}{hint}")]
    return [Finding("coordinator", OK, f"{options.coordinator} answers; it knows {count} node(s)")]


def run_doctor(options: DoctorOptions) -> list[Finding]:
    findings = check_python() + check_cpu(read_cpu_flags()) + check_llama()
    model_findings, verified = check_models(options.cache_dir)
    findings += model_findings
    if any(f.topic == "llama.cpp" and f.status == FAIL for f in findings):
        findings.append(Finding("generation", FAIL, "skipped: fix the llama.cpp build first"))
    else:
        findings += check_generation(verified, options.cache_dir, options.threads)
    return findings + check_mdns() + check_coordinator(options)


def can_serve(findings: Iterable[Finding]) -> bool:
    return not any(f.status == FAIL for f in findings)


def render(findings: list[Finding]) -> str:
    lines = ["dellm doctor"]
    lines += [f"  {f.topic:<12} {f.status:<5} {f.text}" for f in findings]
    verdict = ("this machine can serve" if can_serve(findings)
               else "this machine cannot serve yet: fix the lines marked fail")
    return "\n".join([*lines, f"verdict: {verdict}"])


def as_json(findings: list[Finding]) -> str:
    return json.dumps({"can_serve": can_serve(findings), "findings": [asdict(f) for f in findings]})

