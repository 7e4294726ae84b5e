import hashlib
import os
from pathlib import Path

import pytest

from npuport.core.atomic import read_json
from npuport.core.errors import NpuportError
from npuport.download.download import download
from npuport.download.manifest import ChecksumMismatch, check_file, safe_relpath


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _listing(directory: Path) -> dict[str, tuple[int, str]]:
    """Relative path -> (bytes, sha256) of every file under ``directory`` but the manifest and .git."""
    return {
        p.relative_to(directory).as_posix(): (p.stat().st_size, _sha256(p.read_bytes()))
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "manifest.json" and ".git" not in p.relative_to(directory).parts
    }


def _manifest_listing(manifest: dict) -> dict[str, tuple[int, str]]:
    return {f["path"]: (f["bytes"], f["sha256"]) for f in manifest["files"]}


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
        "expected_sha256": None,  # a local directory advertises no checksum
        "verified": None,
        "verified_by": None,
    }
    assert manifest["source_resolved"] == {"kind": "local", "path": str(src)}
    assert (target / "sub" / "weights.bin").read_bytes() == data
    assert manifest["total_bytes"] == 4096 + len('{"a": 1}')
    assert files["config.json"]["sha256"] == _sha256(b'{"a": 1}') and files["config.json"]["bytes"] == 8
    assert _manifest_listing(manifest) == _listing(src) == _listing(target)  # what is listed is what is there


def test_missing_source_leaves_no_target(tmp_path):
    target = tmp_path / "download"
    with pytest.raises(NpuportError, match="not a directory"):
        download({"kind": "local", "path": "nowhere"}, target, base_dir=tmp_path)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no staging directory left behind either


def test_failed_download_keeps_previous_result(tmp_path):
    src = _source(tmp_path)
    target = tmp_path / "download"
    first = download({"kind": "local", "path": "src"}, target, base_dir=tmp_path)
    with pytest.raises(NpuportError):
        download({"kind": "local", "path": "nowhere"}, target, base_dir=tmp_path)
    assert (target / "manifest.json").exists()
    # the previous manifest, unchanged, and the files it lists, byte for byte
    assert read_json(target / "manifest.json") == first
    assert first["source"] == {"kind": "local", "path": "src"}
    assert _manifest_listing(first) == _listing(target) == _listing(src)
    assert set(_listing(target)) == {"config.json", "sub/weights.bin"}


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


def test_unknown_kind_named(tmp_path):
    with pytest.raises(NpuportError, match="unknown source kind 'ftp'"):
        download({"kind": "ftp"}, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_symlink_inside_source_is_followed(tmp_path):
    src = _source(tmp_path)
    (src / "alias.json").symlink_to("config.json")
    manifest = download({"kind": "local", "path": "src"}, tmp_path / "d", base_dir=tmp_path)
    assert (tmp_path / "d" / "alias.json").read_text() == '{"a": 1}'
    assert "alias.json" in {f["path"] for f in manifest["files"]}
    listed = _manifest_listing(manifest)
    assert listed["alias.json"] == listed["config.json"] == (8, _sha256(b'{"a": 1}'))  # the target's bytes
    assert not (tmp_path / "d" / "alias.json").is_symlink()  # a copy, not a link back into the source


def _entry(path: Path, **expected):
    data = path.read_bytes()
    entry = {"path": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return check_file(entry, path, expected)


def test_check_file_by_sha256_and_git_blob_id(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"hello\n")
    by_sha = _entry(path, sha256=hashlib.sha256(b"hello\n").hexdigest().upper(), size=6)
    assert (by_sha["verified"], by_sha["verified_by"]) == (True, "sha256")
    # `git hash-object` of "hello\n"
    by_oid = _entry(path, git_oid="ce013625030ba8dba906f756967f9e9ca394464a")
    assert (by_oid["verified"], by_oid["verified_by"], by_oid["expected_sha256"]) == (True, "git-blob-sha1", None)
    assert _entry(path)["verified"] is None
    assert _entry(path) == {  # nothing advertised: the measured size and sha256, nothing verified
        "path": "w.bin",
        "bytes": 6,
        "sha256": hashlib.sha256(b"hello\n").hexdigest(),
        "expected_sha256": None,
        "verified": None,
        "verified_by": None,
    }


@pytest.mark.parametrize(
    ("expected", "message"),
    [
        ({"sha256": "0" * 64}, "sha256 .* does not match"),
        ({"git_oid": "0" * 40}, "git blob id"),
        ({"size": 7}, "6 bytes"),
    ],
)
def test_check_file_mismatch_refused(tmp_path, expected, message):
    path = tmp_path / "w.bin"
    path.write_bytes(b"hello\n")
    with pytest.raises(ChecksumMismatch, match=message) as caught:
        _entry(path, **expected)
    assert caught.value.relpath == "w.bin"


def test_published_outputs_get_ordinary_permissions(tmp_path):
    """Temporaries are private (mkstemp/mkdtemp); what is published gets the umask's usual modes."""
    from npuport.core.atomic import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "doc.json", {"a": 1})
        _source(tmp_path)
        download({"kind": "local", "path": "src"}, tmp_path / "download", base_dir=tmp_path)
    finally:
        os.umask(old)
    assert (tmp_path / "doc.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "download").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "download" / "manifest.json").stat().st_mode & 0o777 == 0o644
    assert read_json(tmp_path / "doc.json") == {"a": 1}
    manifest = read_json(tmp_path / "download" / "manifest.json")
    assert _manifest_listing(manifest) == _listing(tmp_path / "download")
    for relpath in _listing(tmp_path / "download"):
        assert (tmp_path / "download" / relpath).stat().st_mode & 0o777 == 0o644, relpath
