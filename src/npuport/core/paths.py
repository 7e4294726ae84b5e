"""One containment rule for every file read from a checkpoint, and the guard of what an output may replace."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from npuport.core.errors import NpuportError

log = logging.getLogger(__name__)

OUTSIDE = "refused: symlink points outside the source directory"
# Directories never read from a checkpoint: version control and caches.
SKIP_DIRS = frozenset({".git", ".cache", "__pycache__"})
_KINDS = {
    stat.S_IFREG: "a file",
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def real_path(path: str | Path) -> Path:
    """The absolute path with every symlink resolved; NpuportError for a symlink loop or a NUL byte.

    A path that does not exist resolves as far as it does (callers check existence themselves)."""
    try:
        real = Path(os.path.realpath(path))
        os.stat(real)
    except ValueError:
        raise NpuportError(repr(str(path)), "refused: the path holds a NUL byte") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NpuportError(path, "refused: symlink loop") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise NpuportError(path, "refused: path too long") from None
    return real


def contained(root: str | Path, path: str | Path) -> Path:
    """The real path of ``path`` (absolute, or relative to ``root``) when it lies inside the real ``root``.

    The one rule for every file the pipeline reads from a checkpoint (weights, index shards, config.json,
    tokenizer and side files), in the CLI and in the workflow alike: a symlink that leads outside is refused."""
    full = Path(root) / path
    root_real, real = real_path(root), real_path(full)
    if real != root_real and not real.is_relative_to(root_real):
        raise NpuportError(full, OUTSIDE)
    return real


@contextlib.contextmanager
def readable(path: str | Path) -> Iterator[BinaryIO]:
    """``open(path, "rb")`` whose OSError (permission denied, I/O error) is an NpuportError naming the file."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise NpuportError(path, f"cannot read: {exc.strerror or exc}") from None
    with handle:
        yield handle


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "an unknown kind of file")


def regular_file(root: str | Path, path: str | Path, *, missing_ok: bool = False) -> Path | None:
    """contained(root, path), checked to be a regular file (a FIFO would block the reader, a device never ends).

    None when it does not exist and ``missing_ok``; NpuportError naming it otherwise."""
    full = Path(root) / path
    real = contained(root, path)
    try:
        mode = os.stat(real).st_mode
    except (FileNotFoundError, NotADirectoryError):
        if missing_ok:
            return None
        raise NpuportError(full, "file not found") from None
    except OSError as exc:
        raise NpuportError(full, f"cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise NpuportError(full, f"refused: {_kind(mode)}, not a regular file")
    return real


def source_dir(path: str | Path, *, missing: str = "checkpoint directory not found") -> Path:
    """The real path of a checkpoint directory; NpuportError when it is missing (``missing`` says so), a
    symlink loop or not a directory."""
    real = real_path(path)
    try:
        mode = os.stat(real).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise NpuportError(path, missing) from None
    if not stat.S_ISDIR(mode):
        raise NpuportError(path, f"refused: {_kind(mode)}, not a directory")
    return real


def source_files(root: str | Path, *, skip_dirs: frozenset[str] = SKIP_DIRS) -> list[tuple[str, Path]]:
    """Every file under ``root`` as (relative POSIX path, real path), sorted, each checked by regular_file.

    Directories named in ``skip_dirs`` and symlinks to directories are not entered. Iterative, so no
    nesting depth makes it fail."""
    root = Path(root)
    files, pending = [], [root]
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            raise NpuportError(directory, f"cannot list: {exc.strerror}") from None
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                if entry.name not in skip_dirs:
                    pending.append(path)
            elif entry.is_symlink() and _is_dir_behind_link(path):
                log.debug("not entering symlinked directory %s", path)
            else:
                rel = path.relative_to(root)
                files.append((rel.as_posix(), regular_file(root, rel)))
    return sorted(files)


def _is_dir_behind_link(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a loop: regular_file names it
        return False


def check_output_dir(out: str | Path, *, source: str | Path, force: bool = False) -> None:
    """Refuse an output directory whose replacement would destroy what the user did not ask to replace.

    Never (even with ``force``): the source itself, a directory containing it or inside it, the working
    directory or one containing it, a symlink, something that is not a directory. Without ``force``: an
    existing directory that is not empty."""
    out_real, source_real, cwd = real_path(out), real_path(source), real_path(os.getcwd())
    never = "refused even with --force"
    if source_real.is_relative_to(out_real):
        what = "is the source directory" if out_real == source_real else f"contains the source {source}"
        raise NpuportError(out, f"{what}: replacing it would delete the checkpoint ({never})")
    if out_real.is_relative_to(source_real):
        raise NpuportError(out, f"is inside the source directory {source}: write the output elsewhere ({never})")
    if cwd.is_relative_to(out_real):
        what = "is the working directory" if out_real == cwd else "contains the working directory"
        raise NpuportError(out, f"{what}: replacing it would delete it ({never})")
    if os.path.islink(out):
        raise NpuportError(out, f"is a symbolic link: name the directory itself ({never})")
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out):
        raise NpuportError(out, f"exists and is not a directory ({never})")
    try:
        with os.scandir(out) as entries:
            occupied = next(entries, None) is not None
    except OSError as exc:
        raise NpuportError(out, f"cannot list: {exc.strerror}") from None
    if occupied and not force:
        raise NpuportError(out, "exists and is not empty: pass --force to replace it")
