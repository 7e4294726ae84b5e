"""Source kind hf against a loopback fake of the hub (tests/hub_server.py): real huggingface_hub, real HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
from hub_server import FakeRepo, Faults, HubServer

from npuport.core.atomic import read_json
from npuport.core.errors import NpuportError
from npuport.download.download import download

FAST = {"retry_backoff_s": 0.1, "timeout_s": 120}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(big: int = 300_000) -> dict[str, bytes]:
    rng = __import__("random").Random(7)
    return {
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "config.json": json.dumps({"hidden_size": 64}).encode(),
        "model.safetensors": rng.randbytes(big),
        "tokenizer/tokenizer.json": '{"vocab": "中文"}'.encode(),
        "extra.bin": rng.randbytes(5000),
    }


@pytest.fixture(autouse=True)
def _hub_env(tmp_path, monkeypatch):
    """huggingface_hub's own state (token file, registries) in the temp dir, no offline mode inherited."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def _serve(monkeypatch, *repos, faults=None) -> HubServer:
    server = HubServer(*repos, faults=faults)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    return server


def _target(tmp_path):
    return tmp_path / "results" / "m" / "download"


def test_snapshot_verified_against_hub_checksums(tmp_path, monkeypatch):
    files = _files()
    repo = FakeRepo("org/tiny", files, token="secret-token")
    monkeypatch.setenv("HF_TOKEN", "secret-token")
    with _serve(monkeypatch, repo) as hub:
        manifest = download({"kind": "hf", "repo_id": "org/tiny", "revision": "main", **FAST}, _target(tmp_path))
    assert read_json(_target(tmp_path) / "manifest.json") == manifest
    by_path = {f["path"]: f for f in manifest["files"]}
    assert set(by_path) == set(files)
    for path, data in files.items():
        assert (_target(tmp_path) / path).read_bytes() == data
        assert by_path[path]["sha256"] == _sha(data) and by_path[path]["bytes"] == len(data)
        assert by_path[path]["verified"] is True
    # LFS files are checked by their sha256, the others by git blob id (the hub lists no sha256 for them)
    assert by_path["model.safetensors"]["expected_sha256"] == _sha(files["model.safetensors"])
    assert by_path["model.safetensors"]["verified_by"] == "sha256"
    assert by_path["config.json"] | {"expected_sha256": None, "verified_by": "git-blob-sha1"} == by_path["config.json"]
    resolved = manifest["source_resolved"]
    assert resolved == {
        "kind": "hf",
        "endpoint": hub.url,
        "repo_id": "org/tiny",
        "revision": "main",
        "commit": repo.commit,
        "offline": False,
    }
    # the token goes to the hub, never to the CDN host the LFS files are redirected to
    api = [r for r in hub.requests if r["path"].startswith(("/api/models", "/org/"))]
    cdn = [r for r in hub.requests if r["path"].startswith("/cdn/")]
    assert api and all(r["authorization"] == "Bearer secret-token" for r in api)
    assert cdn and all(r["authorization"] is None for r in cdn)
    assert (tmp_path / "results" / "m" / ".download-cache" / "hf").is_dir()


def test_connection_dropped_mid_file_is_resumed(tmp_path, monkeypatch):
    files = _files(big=12 << 20)  # over huggingface_hub's 10 MiB write chunk, so a resume starts mid-file
    faults = Faults(drop_after={"model.safetensors": 11 << 20})
    with _serve(monkeypatch, FakeRepo("org/tiny", files), faults=faults) as hub:
        manifest = download({"kind": "hf", "repo_id": "org/tiny", **FAST}, _target(tmp_path))
    gets = hub.gets("model.safetensors")
    assert len(gets) == 2 and gets[0]["range"] is None
    assert gets[1]["range"] == f"bytes={10 << 20}-"
    entry = next(f for f in manifest["files"] if f["path"] == "model.safetensors")
    assert entry["sha256"] == _sha(files["model.safetensors"]) and entry["verified"] is True


def test_wrong_checksum_refused_and_nothing_published(tmp_path, monkeypatch):
    files = _files()
    repo = FakeRepo("org/tiny", files, wrong_sha256={"model.safetensors"})
    with _serve(monkeypatch, repo) as hub:
        with pytest.raises(NpuportError, match=r"model\.safetensors: refused: sha256 .* does not match"):
            download({"kind": "hf", "repo_id": "org/tiny", **FAST}, _target(tmp_path))
        assert not _target(tmp_path).exists()
        assert [p.name for p in _target(tmp_path).parent.iterdir()] == [".download-cache"]
        # the bad copy left the cache: once the hub is fixed, a rerun fetches it again and succeeds
        repo.wrong_sha256.clear()
        manifest = download({"kind": "hf", "repo_id": "org/tiny", **FAST}, _target(tmp_path))
    assert len(hub.gets("model.safetensors")) == 2
    assert all(f["verified"] for f in manifest["files"])


def test_failed_download_keeps_previous_result(tmp_path, monkeypatch):
    files = _files()
    repo = FakeRepo("org/tiny", files)
    with _serve(monkeypatch, repo):
        download({"kind": "hf", "repo_id": "org/tiny", **FAST}, _target(tmp_path))
        before = (_target(tmp_path) / "manifest.json").read_bytes()
        repo.files["model.safetensors"] = b"changed upstream"
        repo.wrong_sha256.add("model.safetensors")
        with pytest.raises(NpuportError, match="does not match"):
            download({"kind": "hf", "repo_id": "org/tiny", **FAST}, _target(tmp_path))
    assert (_target(tmp_path) / "manifest.json").read_bytes() == before


def test_server_errors_are_retried_with_backoff(tmp_path, monkeypatch, caplog):
    faults = Faults(fail_status={"hf_info": [503, 502]})
    with _serve(monkeypatch, FakeRepo("org/tiny", _files()), faults=faults) as hub:
        manifest = download({"kind": "hf", "repo_id": "org/tiny", "max_retries": 4, **FAST}, _target(tmp_path))
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert [m.split(" failed", 1)[0] for m in retries] == ["attempt 1", "attempt 2"]
    assert all(f["verified"] for f in manifest["files"])
    assert len([r for r in hub.requests if r.get("route") == "hf_info"]) == 3


def test_rerun_after_failure_reuses_completed_files(tmp_path, monkeypatch):
    files = _files()
    faults = Faults(fail_status={"extra.bin": [404] * 50})  # one file keeps failing, the others complete
    source = {"kind": "hf", "repo_id": "org/tiny", "max_retries": 0, **FAST}
    with _serve(monkeypatch, FakeRepo("org/tiny", files), faults=faults) as hub:
        with pytest.raises(NpuportError):
            download(source, _target(tmp_path))
        assert not _target(tmp_path).exists()
        assert len(hub.gets("model.safetensors")) == 1
        faults.fail_status.clear()
        download(source, _target(tmp_path))
    assert len(hub.gets("model.safetensors")) == 1  # not fetched again
    assert len(hub.gets("extra.bin")) == 1


def test_offline_rerun_completes_from_cache(tmp_path, monkeypatch):
    files = _files()
    source = {"kind": "hf", "repo_id": "org/tiny", "max_retries": 0, **FAST}
    with _serve(monkeypatch, FakeRepo("org/tiny", files)):
        first = download(source, _target(tmp_path))
    shutil.rmtree(_target(tmp_path))
    # the server is gone (connection refused): everything comes from results/m/.download-cache
    again = download(source, _target(tmp_path))
    assert again["files"] == first["files"]
    assert again["source_resolved"] == first["source_resolved"] | {"offline": True}


def test_unreachable_hub_without_cache_fails_clearly(tmp_path, monkeypatch):
    with _serve(monkeypatch):  # a port that is closed once the server is gone
        pass
    with pytest.raises(NpuportError, match=r"hf:org/tiny@main: failed after 2 attempt\(s\): .*Connect"):
        download({"kind": "hf", "repo_id": "org/tiny", "max_retries": 1, **FAST}, _target(tmp_path))
    assert not _target(tmp_path).exists()


@pytest.mark.parametrize(
    ("source", "token", "message"),
    [
        ({"repo_id": "org/none"}, None, "repository not found"),
        ({"repo_id": "org/tiny", "revision": "v9"}, None, "revision not found"),
        ({"repo_id": "org/tiny"}, "wrong", "private and HF_TOKEN"),
    ],
)
def test_permanent_errors_are_not_retried(tmp_path, monkeypatch, source, token, message):
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    repo = FakeRepo("org/tiny", _files(), token="right" if token else None)
    with _serve(monkeypatch, repo) as hub:
        with pytest.raises(NpuportError, match=message):
            download({"kind": "hf", **source, "max_retries": 3, "retry_backoff_s": 5}, _target(tmp_path))
    assert len([r for r in hub.requests if r.get("route") == "hf_info"]) == 1


def test_names_escaping_the_target_refused(tmp_path, monkeypatch):
    repo = FakeRepo("org/tiny", _files(), extra_listing=["../../outside.bin"])
    with _serve(monkeypatch, repo):
        with pytest.raises(NpuportError, match="escape the download directory"):
            download({"kind": "hf", "repo_id": "org/tiny", **FAST}, _target(tmp_path))
    assert not (tmp_path / "results" / "outside.bin").exists()
    assert not _target(tmp_path).exists()


def test_allow_and_ignore_patterns(tmp_path, monkeypatch):
    source = {"kind": "hf", "repo_id": "org/tiny", "allow_patterns": ["*.json"], "ignore_patterns": ["tokenizer/*"]}
    with _serve(monkeypatch, FakeRepo("org/tiny", _files())) as hub:
        manifest = download(source | FAST, _target(tmp_path))
    assert [f["path"] for f in manifest["files"]] == ["config.json"]
    assert hub.gets("model.safetensors") == []


def test_total_time_is_bounded_and_a_rerun_completes(tmp_path, monkeypatch):
    """The hub holds model.safetensors for 600 s; timeout_s=15 leaves a loaded host room to start the worker and
    reach that file (the .incomplete it leaves is checked), and the download gives up while the hub still holds it."""
    faults = Faults(stall_s={"model.safetensors": 600})
    with _serve(monkeypatch, FakeRepo("org/tiny", _files()), faults=faults) as hub:
        with pytest.raises(NpuportError, match=r"did not finish within timeout_s=15; .*\.download-cache"):
            download({"kind": "hf", "repo_id": "org/tiny", "timeout_s": 15}, _target(tmp_path))
        assert hub.gets("model.safetensors") and hub.stalls_ended == []  # bounded: it did not wait for the answer
        assert not _target(tmp_path).exists()
        cache = tmp_path / "results" / "m" / ".download-cache"
        assert list(cache.rglob("*.incomplete"))  # what the killed download left behind
        faults.stall_s.clear()
        manifest = download({"kind": "hf", "repo_id": "org/tiny", "timeout_s": 60}, _target(tmp_path))
    assert all(f["verified"] for f in manifest["files"])
    assert not list(cache.rglob("*.incomplete"))


def test_endpoint_is_read_when_download_runs(tmp_path, monkeypatch):
    """HF_ENDPOINT set after huggingface_hub was imported in this process still takes effect."""
    import huggingface_hub  # noqa: F401

    with _serve(monkeypatch, FakeRepo("org/tiny", _files())) as hub:
        assert os.environ["HF_ENDPOINT"] == hub.url
        manifest = download({"kind": "hf", "repo_id": "org/tiny", **FAST}, _target(tmp_path))
    assert manifest["source_resolved"]["endpoint"] == hub.url


def _serve_directory(directory, repo_id: str) -> FakeRepo:
    files = {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not {".git", ".cache", "__pycache__"} & set(p.relative_to(directory).parts)
    }
    return FakeRepo(repo_id, files)


def _ensure_checkpoint(directory) -> None:
    """The embedded model when it has weights; otherwise a small random latent checkpoint in its place."""
    if any(directory.glob("*.safetensors")) or any(directory.glob("*.bin")):
        return
    from model_factory import tiny_model, write_latent_checkpoint

    shutil.rmtree(directory, ignore_errors=True)
    write_latent_checkpoint(directory, tiny_model(seed=5))


@pytest.mark.e2e
def test_hf_source_gives_the_same_artifacts_as_local(tmp_path):
    """Snakemake: the same checkpoint from a local path and from the (loopback) hub introspects and fuses alike."""
    from conftest import copy_workflow, run_snakemake

    workdir = copy_workflow(tmp_path / "wf")
    checkpoint = workdir / "resources" / "tiny-bitcpm"
    _ensure_checkpoint(checkpoint)
    (workdir / "two-sources.yaml").write_text(
        "models:\n"
        "  - {name: local, source: {kind: local, path: resources/tiny-bitcpm}}\n"
        "  - {name: hub, source: {kind: hf, repo_id: npuport/tiny-bitcpm, revision: main, retry_backoff_s: 0.1}}\n",
        encoding="utf-8",
    )
    targets = [f"results/{m}/{t}" for m in ("local", "hub") for t in ("introspect.json", "model")]
    with HubServer(_serve_directory(checkpoint, "npuport/tiny-bitcpm")) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home")}
        run_snakemake(workdir, *targets, "--configfile", "two-sources.yaml", env=env)
    local, remote = workdir / "results" / "local", workdir / "results" / "hub"
    assert read_json(local / "introspect.json") == read_json(remote / "introspect.json")
    shards = sorted(p.relative_to(local / "model") for p in (local / "model").rglob("*") if p.is_file())
    assert any(p.suffix == ".safetensors" for p in shards)
    assert shards == sorted(p.relative_to(remote / "model") for p in (remote / "model").rglob("*") if p.is_file())
    for rel in shards:
        if rel.name != "fuse.json":
            assert _sha((local / "model" / rel).read_bytes()) == _sha((remote / "model" / rel).read_bytes()), rel
    manifest = read_json(remote / "download" / "manifest.json")
    assert manifest["source_resolved"]["endpoint"] == hub.url
    assert all(f["verified"] for f in manifest["files"])
    assert [f["sha256"] for f in manifest["files"]] == [
        f["sha256"] for f in read_json(local / "download" / "manifest.json")["files"]
    ]
