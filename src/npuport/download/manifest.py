"""The download manifest: every file of a checkpoint with its size and sha256, checked against the source's own."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from npuport.core.errors import NpuportError

MANIFEST_NAME = "manifest.json"
_CHUNK = 8 << 20


class ChecksumMismatch(NpuportError):
    """A downloaded file differs from the checksum or size its source advertised."""

    def __init__(self, relpath: str, problem: str):
        self.relpath = relpath
        super().__init__(relpath, problem)


def safe_relpath(name: str) -> PurePosixPath:
    """``name`` as a relative path that cannot leave its directory, or NpuportError."""
    path = PurePosixPath(name)
    if not name or "\\" in name or "\0" in name or path.is_absolute() or any(p in ("..", "") for p in path.parts):
        raise NpuportError(name, "refused: file name would escape the download directory")
    return path


def sha256_file(path: Path, progress: bool = False) -> str:
    """sha256 of a file, streamed in chunks; a progress bar for big files when asked."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with (
        open(path, "rb") as fh,
        tqdm(
            total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", disable=not progress or size < (64 << 20)
        ) as bar,
    ):
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file's content ("blob <size>\\0" + bytes), as git and the hubs list it."""
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(entry: dict, path: Path, expected: dict | None) -> dict:
    """``entry`` with expected_sha256/verified/verified_by set from what the source advertised.

    ``expected`` may hold ``size``, ``sha256`` (LFS / hub metadata) and ``git_oid`` (git blob sha1, for
    files outside LFS). ``verified`` is None where the source gave no checksum. Raises ChecksumMismatch.
    """
    expected = expected or {}
    rel = entry["path"]
    result = entry | {"expected_sha256": expected.get("sha256"), "verified": None, "verified_by": None}
    if expected.get("size") is not None and expected["size"] != entry["bytes"]:
        raise ChecksumMismatch(rel, f"refused: {entry['bytes']} bytes, the source lists {expected['size']}")
    if expected.get("sha256"):
        if expected["sha256"].lower() != entry["sha256"]:
            raise ChecksumMismatch(
                rel, f"refused: sha256 {entry['sha256']} does not match the source's {expected['sha256']}"
            )
        return result | {"verified": True, "verified_by": "sha256"}
    if expected.get("git_oid"):
        actual = git_blob_sha1(path)
        if actual != expected["git_oid"].lower():
            raise ChecksumMismatch(
                rel, f"refused: git blob id {actual} does not match the source's {expected['git_oid']}"
            )
        return result | {"verified": True, "verified_by": "git-blob-sha1"}
    return result


def build_manifest(
    directory: Path,
    source: dict,
    *,
    resolved: dict | None = None,
    expected: dict[str, dict] | None = None,
    progress: bool = True,
) -> dict:
    """Manifest of every regular file under ``directory`` (except the manifest itself).

    ``expected`` maps relative paths to what the source advertised (see ``check_file``); a file that
    does not match raises ChecksumMismatch. ``resolved`` records what the source spec resolved to
    (e.g. the commit sha of a branch).
    """
    files = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        rel = path.relative_to(directory).as_posix()
        entry = {"path": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path, progress)}
        files.append(check_file(entry, path, (expected or {}).get(rel)))
    return {
        "source": source,
        "source_resolved": resolved or {},
        "files": files,
        "total_bytes": sum(f["bytes"] for f in files),
        "verified_files": sum(1 for f in files if f["verified"]),
    }
