"""Page-cache eviction for cold-read measurements (imported by the benchmark scripts beside it)."""

from __future__ import annotations

import os
from pathlib import Path


def evict(paths: list[Path]) -> None:
    """Drop these files' pages (only theirs) from the page cache, so the next reader reads the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
