"""Source kind git: real git + git-lfs against a local origin over file:// (git-lfs serves file:// remotes itself)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from npuport.core.errors import NpuportError
from npuport.download.download import download

HAS_GIT_LFS = (
    shutil.which("git") is not None and subprocess.run(["git", "lfs", "version"], capture_output=True).returncode == 0
)
needs_lfs = pytest.mark.skipif(not HAS_GIT_LFS, reason="git-lfs not installed (apt-get install git-lfs)")
FAST = {"retry_backoff_s": 0.1, "timeout_s": 120, "max_retries": 1}


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture(autouse=True)
def _isolated_git(tmp_path, monkeypatch):
    """No user or system git config (the download must not depend on `git lfs install` having run)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    for name, value in (("AUTHOR", "t"), ("COMMITTER", "t")):
        monkeypatch.setenv(f"GIT_{name}_NAME", value)
        monkeypatch.setenv(f"GIT_{name}_EMAIL", f"{value}@example.invalid")


class Origin:
    """A bare repository with LFS objects (its own lfs/objects store), fed from a work tree."""

    def __init__(self, root: Path):
        self.bare, self.work = root / "origin.git", root / "work"
        self.url = self.bare.as_uri()
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.bare)], check=True)
        subprocess.run(["git", "init", "-q", "-b", "main", str(self.work)], check=True)
        _git(self.work, "lfs", "install", "--local")
        _git(self.work, "remote", "add", "origin", self.url)
        _git(self.work, "lfs", "track", "*.safetensors", "*.bin")

    def commit(self, files: dict[str, bytes], message: str = "update", tag: str | None = None, hooks=True) -> str:
        for name, data in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        _git(self.work, "add", "-A")
        _git(self.work, "commit", "-q", "-m", message)
        if tag:
            _git(self.work, "tag", tag)
        _git(self.work, "push", "-q", *(() if hooks else ("--no-verify",)), "--tags", "origin", "main")
        return _git(self.work, "rev-parse", "HEAD")


def _weights(seed: int) -> dict[str, bytes]:
    rng = __import__("random").Random(seed)
    return {
        "config.json": b'{"hidden_size": %d}' % seed,
        "model.safetensors": rng.randbytes(200_000),
        "shards/pytorch_model-1.bin": rng.randbytes(3000),
    }


@pytest.fixture
def origin(tmp_path):
    return Origin(tmp_path / "remote")


def _target(tmp_path) -> Path:
    return tmp_path / "results" / "m" / "download"


@needs_lfs
def test_clone_pinned_revisions_verified(tmp_path, origin):
    v1, v2 = _weights(1), _weights(2)
    first = origin.commit(v1, tag="v1")
    second = origin.commit(v2)
    for revision, commit, files in (("v1", first, v1), (first, first, v1), ("main", second, v2)):
        source = {"kind": "git", "url": origin.url, "revision": revision, **FAST}
        manifest = download(source, _target(tmp_path))
        by_path = {f["path"]: f for f in manifest["files"]}
        assert set(by_path) == set(files) | {".gitattributes"}
        for name, data in files.items():
            assert (_target(tmp_path) / name).read_bytes() == data
            assert by_path[name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert all(f["verified"] for f in manifest["files"])
        assert by_path["model.safetensors"]["verified_by"] == "sha256"  # the LFS pointer's oid
        assert by_path["model.safetensors"]["expected_sha256"] == hashlib.sha256(files["model.safetensors"]).hexdigest()
        assert by_path["config.json"]["verified_by"] == "git-blob-sha1"
        assert manifest["source_resolved"] == {
            "kind": "git",
            "url": origin.url,
            "revision": revision,
            "commit": commit,
            "offline": False,
        }


@needs_lfs
def test_rerun_fetches_new_commits_and_works_offline(tmp_path, origin):
    origin.commit(_weights(1))
    source = {"kind": "git", "url": origin.url, "revision": "main", **FAST}
    download(source, _target(tmp_path))
    newer = origin.commit(_weights(2))
    manifest = download(source, _target(tmp_path))
    assert manifest["source_resolved"]["commit"] == newer
    assert (_target(tmp_path) / "config.json").read_bytes() == _weights(2)["config.json"]
    # host gone: the clone in results/m/.download-cache serves the rerun
    shutil.rmtree(origin.bare)
    shutil.rmtree(_target(tmp_path))
    again = download(source, _target(tmp_path))
    assert again["source_resolved"] == manifest["source_resolved"] | {"offline": True}
    assert again["files"] == manifest["files"]


def test_missing_git_lfs_is_named(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin-without-lfs"
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git"))
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("GIT_EXEC_PATH", _git(tmp_path, "--exec-path"))
    with pytest.raises(
        NpuportError, match=r"git-lfs is not installed \(`git lfs version` failed\).*apt-get install git-lfs"
    ):
        download({"kind": "git", "url": "file:///nowhere", "revision": "main"}, _target(tmp_path))
    assert not _target(tmp_path).exists()


@needs_lfs
def test_pointer_committed_outside_lfs_tracking_refused(tmp_path, origin):
    """A pointer file whose path .gitattributes does not track: `git lfs pull` leaves it as text."""
    data = os.urandom(4000)
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n" % (
        hashlib.sha256(data).hexdigest().encode(),
        len(data),
    )
    origin.commit(_weights(1))
    origin.commit({"optimizer.pt": pointer}, hooks=False)  # git-lfs's pre-push hook would look for its object
    with pytest.raises(NpuportError, match=r"LFS pointer files were not replaced by their content: optimizer\.pt"):
        download({"kind": "git", "url": origin.url, "revision": "main", **FAST}, _target(tmp_path))
    assert not _target(tmp_path).exists()


@needs_lfs
def test_lfs_objects_missing_on_server_refused(tmp_path, origin):
    origin.commit(_weights(1))
    shutil.rmtree(origin.bare / "lfs" / "objects")
    with pytest.raises(NpuportError, match=r"LFS pointer files were not replaced.*model\.safetensors"):
        download({"kind": "git", "url": origin.url, "revision": "main", **FAST}, _target(tmp_path))
    assert not _target(tmp_path).exists()


@needs_lfs
def test_commit_on_no_branch_fetched_by_id(tmp_path, origin):
    origin.commit(_weights(1))
    _git(origin.bare, "config", "uploadpack.allowAnySHA1InWant", "true")
    _git(origin.work, "checkout", "-q", "-b", "side")
    side = origin.commit(_weights(2))
    _git(origin.work, "push", "-q", "origin", "side")  # uploads its LFS objects too
    _git(origin.work, "push", "-q", "origin", ":side")  # the branch goes, the commit stays, on no branch
    manifest = download({"kind": "git", "url": origin.url, "revision": side, **FAST}, _target(tmp_path))
    assert manifest["source_resolved"]["commit"] == side
    assert (_target(tmp_path) / "config.json").read_bytes() == _weights(2)["config.json"]


@needs_lfs
def test_unknown_revision_named(tmp_path, origin):
    origin.commit(_weights(1))
    with pytest.raises(NpuportError, match="'nope' is neither a branch, a tag nor a commit"):
        download({"kind": "git", "url": origin.url, "revision": "nope", **FAST}, _target(tmp_path))


@needs_lfs
def test_symlink_out_of_the_repository_refused(tmp_path, origin):
    (tmp_path / "secret").write_text("x")
    origin.commit(_weights(1))
    (origin.work / "leak").symlink_to(tmp_path / "secret")
    origin.commit({})
    with pytest.raises(NpuportError, match="symlink points outside"):
        download({"kind": "git", "url": origin.url, "revision": "main", **FAST}, _target(tmp_path))
    assert not _target(tmp_path).exists()


@needs_lfs
def test_unreachable_host_without_clone_fails_after_retries(tmp_path):
    missing = (tmp_path / "gone.git").as_uri()
    with pytest.raises(NpuportError, match=r"failed after 2 attempt\(s\): git clone failed"):
        download({"kind": "git", "url": missing, "revision": "main", **FAST}, _target(tmp_path))
