"""Source kind modelscope: the real ModelScope SDK (optional extra) against the loopback fake hub."""

from __future__ import annotations

import hashlib
import shutil
import sys

import pytest
from hub_server import FakeRepo, Faults, HubServer

from npuport.core.errors import NpuportError
from npuport.download.download import download

FAST = {"retry_backoff_s": 0.1, "timeout_s": 120}
needs_sdk = pytest.mark.skipif(
    __import__("importlib").util.find_spec("modelscope_hub") is None, reason="ModelScope SDK not installed"
)


@pytest.fixture(autouse=True)
def _sdk_env(tmp_path, monkeypatch):
    """The SDK's own config and default cache in the temp dir; no token or endpoint inherited."""
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-cache"))
    monkeypatch.setenv("MODELSCOPE_HOME", str(tmp_path / "ms-home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("MODELSCOPE_API_TOKEN", "MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN"):
        monkeypatch.delenv(name, raising=False)


def _files() -> dict[str, bytes]:
    rng = __import__("random").Random(3)
    return {
        "config.json": b'{"hidden_size": 64}',
        "model.safetensors": rng.randbytes(400_000),
        "tokenizer/tokenizer.json": b"{}",
    }


def _serve(monkeypatch, *repos, faults=None) -> HubServer:
    server = HubServer(*repos, faults=faults)
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", server.url)
    return server


def _target(tmp_path):
    return tmp_path / "results" / "m" / "download"


@needs_sdk
def test_snapshot_verified_against_listed_sha256(tmp_path, monkeypatch):
    files = _files()
    with _serve(monkeypatch, FakeRepo("org/tiny", files)) as hub:
        manifest = download({"kind": "modelscope", "model_id": "org/tiny", **FAST}, _target(tmp_path))
    assert {f["path"] for f in manifest["files"]} == set(files)
    for entry in manifest["files"]:
        data = files[entry["path"]]
        assert (_target(tmp_path) / entry["path"]).read_bytes() == data
        assert entry["sha256"] == entry["expected_sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["verified"] is True
    assert manifest["source_resolved"] == {
        "kind": "modelscope",
        "endpoint": hub.url,
        "model_id": "org/tiny",
        "revision": "master",
        "commit": None,  # ModelScope names no commit for a branch
        "offline": False,
    }
    assert (tmp_path / "results" / "m" / ".download-cache" / "modelscope").is_dir()
    assert not [p for p in (tmp_path / "ms-cache").rglob("*") if p.is_file()]  # nothing in the SDK's own cache


@needs_sdk
def test_wrong_checksum_refused(tmp_path, monkeypatch):
    repo = FakeRepo("org/tiny", _files(), wrong_sha256={"model.safetensors"})
    with _serve(monkeypatch, repo):
        with pytest.raises(NpuportError, match=r"model\.safetensors.*does not match"):
            download({"kind": "modelscope", "model_id": "org/tiny", **FAST}, _target(tmp_path))
    assert not _target(tmp_path).exists()


@needs_sdk
def test_dropped_connection_retried(tmp_path, monkeypatch):
    files = _files()
    faults = Faults(drop_after={"model.safetensors": 100_000})
    with _serve(monkeypatch, FakeRepo("org/tiny", files), faults=faults) as hub:
        manifest = download({"kind": "modelscope", "model_id": "org/tiny", **FAST}, _target(tmp_path))
    assert len(hub.gets("model.safetensors")) >= 2
    entry = next(f for f in manifest["files"] if f["path"] == "model.safetensors")
    assert entry["sha256"] == hashlib.sha256(files["model.safetensors"]).hexdigest()


@needs_sdk
def test_offline_rerun_completes_from_cache(tmp_path, monkeypatch):
    source = {"kind": "modelscope", "model_id": "org/tiny", "max_retries": 0, **FAST}
    with _serve(monkeypatch, FakeRepo("org/tiny", _files())):
        first = download(source, _target(tmp_path))
    shutil.rmtree(_target(tmp_path))
    again = download(source, _target(tmp_path))
    assert again["files"] == first["files"]
    assert again["source_resolved"]["offline"] is True


def test_missing_sdk_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)  # what an absent package looks like to `import`
    with pytest.raises(NpuportError, match="pip install modelscope"):
        download({"kind": "modelscope", "model_id": "org/tiny"}, _target(tmp_path))
    assert not _target(tmp_path).exists()
