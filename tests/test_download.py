import hashlib
import os

import pytest

from npuport.atomic import read_json
from npuport.download import download
from npuport.errors import NpuportError
from npuport.manifest import safe_relpath


def _source(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "sub" / "weights.bin").write_bytes(os.urandom(4096))
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref")
    return src


def test_local_download_writes_manifest_with_sha256(tmp_path):
    src = _source(tmp_path)
    target = tmp_path / "results" / "m" / "download"
    manifest = download({"kind": "local", "path": "src"}, target, base_dir=tmp_path)
    assert read_json(target / "manifest.json") == manifest
    files = {f["path"]: f for f in manifest["files"]}
    assert set(files) == {"config.json", "sub/weights.bin"}  # .git left out
    data = (src / "sub" / "weights.bin").read_bytes()
    assert files["sub/weights.bin"] == {
        "path": "sub/weights.bin",
        "bytes": 4096,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert (target / "sub" / "weights.bin").read_bytes() == data
    assert manifest["total_bytes"] == 4096 + len('{"a": 1}')


def test_missing_source_leaves_no_target(tmp_path):
    target = tmp_path / "download"
    with pytest.raises(NpuportError, match="not a directory"):
        download({"kind": "local", "path": "nowhere"}, target, base_dir=tmp_path)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no staging directory left behind either


def test_failed_download_keeps_previous_result(tmp_path):
    _source(tmp_path)
    target = tmp_path / "download"
    download({"kind": "local", "path": "src"}, target, base_dir=tmp_path)
    with pytest.raises(NpuportError):
        download({"kind": "local", "path": "nowhere"}, target, base_dir=tmp_path)
    assert (target / "manifest.json").exists()


def test_symlink_escaping_source_refused(tmp_path):
    src = _source(tmp_path)
    (tmp_path / "secret").write_text("x")
    (src / "link").symlink_to(tmp_path / "secret")
    target = tmp_path / "download"
    with pytest.raises(NpuportError, match="symlink points outside"):
        download({"kind": "local", "path": "src"}, target, base_dir=tmp_path)
    assert not target.exists()


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../b", "a\\..\\b", ""])
def test_path_traversal_names_refused(name):
    with pytest.raises(NpuportError, match="escape"):
        safe_relpath(name)


def test_plain_relative_names_accepted():
    assert str(safe_relpath("sub/model.safetensors")) == "sub/model.safetensors"


def test_remote_kinds_say_not_implemented(tmp_path):
    with pytest.raises(NpuportError, match="not implemented"):
        download({"kind": "hf", "repo_id": "a/b"}, tmp_path / "d")
    assert not (tmp_path / "d").exists()
