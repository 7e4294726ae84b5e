"""Fetch a checkpoint into the pipeline's download directory, atomically, with a manifest."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from npuport.atomic import atomic_dir, write_json
from npuport.errors import NpuportError
from npuport.manifest import MANIFEST_NAME, build_manifest, safe_relpath

# Directory names never copied from a local source.
_SKIP_DIRS = {".git", ".cache", "__pycache__"}


def local_files(source_path: Path) -> list[Path]:
    """Regular files of a local checkpoint directory, relative to it, VCS folders left out."""
    if not source_path.is_dir():
        raise NpuportError(source_path, "local source is not a directory")
    files = []
    for root, dirs, names in os.walk(source_path):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        for name in sorted(names):
            files.append((Path(root) / name).relative_to(source_path))
    if not files:
        raise NpuportError(source_path, "local source directory is empty")
    return files


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def fetch_local(source_path: Path, staging: Path) -> None:
    """Hard-link (or copy, across file systems) every file of ``source_path`` into ``staging``."""
    for rel in local_files(source_path):
        src = source_path / rel
        if src.is_symlink() and not src.resolve().is_relative_to(source_path.resolve()):
            raise NpuportError(src, "refused: symlink points outside the source directory")
        _link_or_copy(src.resolve(), staging / safe_relpath(rel.as_posix()))


def download(source: dict, target: str | Path, base_dir: str | Path = ".") -> dict:
    """Fetch ``source`` into ``target`` (replaced atomically) and write its manifest.json.

    Relative local paths are taken relative to ``base_dir`` (the workflow directory).
    Returns the manifest.
    """
    kind = source["kind"]
    target = Path(target)
    with atomic_dir(target) as staging:
        if kind == "local":
            fetch_local((Path(base_dir) / source["path"]).resolve(), staging)
        else:
            raise NpuportError(None, f"source kind {kind!r} is not implemented yet (only 'local' is)")
        manifest = build_manifest(staging, source)
        write_json(staging / MANIFEST_NAME, manifest)
    return manifest
