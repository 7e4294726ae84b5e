"""The download manifest: every file of a checkpoint with its size and sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from npuport.errors import NpuportError

MANIFEST_NAME = "manifest.json"
_CHUNK = 8 << 20


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
    with open(path, "rb") as fh, tqdm(
        total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", disable=not progress or size < (64 << 20)
    ) as bar:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def build_manifest(directory: Path, source: dict, progress: bool = True) -> dict:
    """Manifest of every regular file under ``directory`` (except the manifest itself)."""
    files = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        rel = path.relative_to(directory).as_posix()
        files.append({"path": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path, progress)})
    return {"source": source, "files": files, "total_bytes": sum(f["bytes"] for f in files)}
