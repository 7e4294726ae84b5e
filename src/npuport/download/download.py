"""Fetch a checkpoint into the pipeline's download directory, verified and atomically, with a manifest.

Local sources are hard-linked (or copied) in. Remote sources (``npuport.download.sources``: hf, modelscope,
git) are first brought into a cache beside the target, ``<results>/<model>/.download-cache/``, so an
interrupted or failed run leaves its completed files there for the next one; then the listed files
are linked into a staging directory, each checked against the checksum its source advertises, and
the staging directory replaces the target in one rename. A mismatch publishes nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from npuport.core.atomic import atomic_dir, write_json
from npuport.core.errors import NpuportError
from npuport.core.paths import SKIP_DIRS, real_path, regular_file, source_dir, source_files
from npuport.download.manifest import MANIFEST_NAME, ChecksumMismatch, build_manifest, safe_relpath
from npuport.download.sources.common import Fetched, Policy

log = logging.getLogger(__name__)

CACHE_DIR_NAME = ".download-cache"
REMOTE_KINDS = ("hf", "modelscope", "git")


def local_files(source_path: Path) -> list[Path]:
    """Files of a local checkpoint directory, relative to it, VCS and cache folders left out; each one a regular
    file inside the directory (npuport.core.paths.source_files refuses a symlink leading out, a loop, a FIFO)."""
    source_dir(source_path, missing="local source is not a directory (not found)")
    files = [Path(rel) for rel, _ in source_files(source_path, skip_dirs=SKIP_DIRS)]
    if not files:
        raise NpuportError(source_path, "local source directory is empty")
    return files


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _place(src: Path, trusted_root: Path, dst: Path) -> None:
    """Link ``src`` (resolved, and refused unless it is a regular file inside ``trusted_root``) to ``dst``."""
    real = regular_file(trusted_root, src, missing_ok=True)
    if real is None:
        raise NpuportError(src, "missing from the fetched files")
    _link_or_copy(real, dst)


def fetch_local(source_path: Path, staging: Path) -> None:
    """Hard-link (or copy, across file systems) every file of ``source_path`` into ``staging``."""
    for rel in local_files(source_path):
        _place(source_path / rel, source_path, staging / safe_relpath(rel.as_posix()))


def cache_dir_for(target: Path) -> Path:
    """Where remote sources keep what they fetched for ``target`` (beside it, so reruns resume)."""
    return target.parent / CACHE_DIR_NAME


def fetch_remote(source: dict, cache: Path) -> Fetched:
    """Bring a remote ``source`` into ``cache`` (``cache/<kind>``) under its timeout and retry policy."""
    # the sources fetch in a child, `python -m npuport.download.sources.worker`: imported here (not by the registry,
    # which the worker imports) so that the download's code hash covers it
    from npuport.download.sources import worker  # noqa: F401
    from npuport.download.sources.registry import SOURCES

    return SOURCES[source["kind"]].fetch(source, cache / source["kind"], Policy.from_source(source))


def download(source: dict, target: str | Path, base_dir: str | Path = ".", cache_dir: str | Path | None = None) -> dict:
    """Fetch ``source`` into ``target`` (replaced atomically) and write its manifest.json.

    Relative local paths are taken relative to ``base_dir`` (the workflow directory). Remote
    sources use ``cache_dir`` (default: ``.download-cache`` beside ``target``). Returns the manifest.
    """
    kind = source["kind"]
    target = Path(target)
    if kind == "local":
        source_path = real_path(Path(base_dir) / source["path"])
        with atomic_dir(target) as staging:
            fetch_local(source_path, staging)
            manifest = build_manifest(staging, source, resolved={"kind": "local", "path": str(source_path)})
            write_json(staging / MANIFEST_NAME, manifest)
        return manifest
    if kind not in REMOTE_KINDS:
        raise NpuportError(None, f"unknown source kind {kind!r} (known: local, {', '.join(REMOTE_KINDS)})")
    fetched = fetch_remote(source, Path(cache_dir) if cache_dir else cache_dir_for(target))
    return publish(fetched, source, target)


def publish(fetched: Fetched, source: dict, target: Path) -> dict:
    """Link the fetched files into a staging dir, verify each, then rename it onto ``target``."""
    try:
        with atomic_dir(target) as staging:
            for rel in fetched.files:
                _place(fetched.root / rel, fetched.trusted_root, staging / safe_relpath(rel))
            manifest = build_manifest(staging, source, resolved=fetched.resolved, expected=fetched.files)
            write_json(staging / MANIFEST_NAME, manifest)
    except ChecksumMismatch as exc:
        fetched.discard(exc.relpath)
        raise NpuportError(
            exc.path, f"{exc.problem}; nothing published, the bad copy was removed from the cache"
        ) from None
    verified = manifest["verified_files"]
    log.info(
        "published %d files (%d bytes, %d verified against the source's checksums) from %s",
        len(manifest["files"]), manifest["total_bytes"], verified, fetched.resolved,
    )  # fmt: skip
    return manifest
