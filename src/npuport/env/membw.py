"""Host memory bandwidth: a short copy benchmark (STREAM's Copy kernel in numpy), reported with its method.

The buffer is several times the last-level cache, so the copy runs from and to DRAM; it is copied by one thread per
usable core (numpy releases the GIL for a plain copy), a few times after one untimed copy that faults the pages in,
and the best of them is the result (STREAM's convention: a bound is what the memory can do, and a copy slowed by
anything else running is not that). Bandwidth counts bytes read plus bytes written per second (STREAM's convention, the
one datasheets use for their memory bandwidth): the ``bench`` stage divides it by the bytes a decode step reads.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MIB = 1 << 20
MIN_BUFFER = 64 * MIB
MAX_BUFFER = 1024 * MIB
CACHE_FACTOR = 4  # the buffer is at least this many times the largest cache
REPEATS = 5


def largest_cache_bytes(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int | None:
    """Size of the largest CPU cache sysfs lists (the last-level cache), None where sysfs does not say."""
    sizes = []
    for entry in root.glob("index*/size"):
        text = entry.read_text(encoding="ascii", errors="replace").strip().upper()
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        if text[-1:] in units and text[:-1].isdigit():
            sizes.append(int(text[:-1]) * units[text[-1]])
        elif text.isdigit():
            sizes.append(int(text))
    return max(sizes) if sizes else None


def buffer_bytes(cache: int | None, available: int | None) -> int:
    """CACHE_FACTOR x the largest cache, within [MIN_BUFFER, MAX_BUFFER], and at most 1/8 of available memory
    (two buffers are allocated)."""
    size = max(MIN_BUFFER, CACHE_FACTOR * (cache or 0))
    if available:
        size = min(size, available // 8)
    return max(MIB, min(size, MAX_BUFFER)) // MIB * MIB


def _available_memory() -> int | None:
    for line in Path("/proc/meminfo").read_text(encoding="ascii", errors="replace").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def measure_memory_bandwidth(*, size: int | None = None, repeats: int = REPEATS, threads: int | None = None) -> dict:
    """The host's copy bandwidth (bytes read + written per second), the best of ``repeats`` timed copies of a buffer
    of ``size`` bytes (default: see ``buffer_bytes``) by ``threads`` threads (default: every usable core)."""
    import numpy as np

    cache = largest_cache_bytes()
    size = size or buffer_bytes(cache, _available_memory())
    threads = threads or _threads()
    src = np.ones(size, dtype=np.uint8)
    dst = np.empty_like(src)
    bounds = [size * i // threads // 64 * 64 for i in range(threads)] + [size]
    parts = [(dst[a:b], src[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    seconds = []
    with ThreadPoolExecutor(threads) as pool:
        for attempt in range(repeats + 1):
            start = time.perf_counter()
            list(pool.map(lambda pair: np.copyto(*pair), parts))
            if attempt:  # the first copy faults the pages in: not a bandwidth
                seconds.append(time.perf_counter() - start)
    samples = [2 * size / s for s in seconds]
    return _record(max(samples), samples, size=size, cache=cache, threads=threads)


def _record(bandwidth: float, samples: list[float], *, size: int, cache: int | None, threads: int) -> dict[str, Any]:
    cache_text = f"{CACHE_FACTOR} x the {cache // MIB} MiB last-level cache" if cache else "no cache size in sysfs"
    return {
        "kind": "measured",
        "bytes_per_s": bandwidth,
        "gb_per_s": round(bandwidth / 1e9, 2),
        "method": (
            f"numpy copy (STREAM Copy) of a {size // MIB} MiB buffer ({cache_text}) by {threads} thread(s), "
            f"best of {len(samples)} timed copies after one untimed; bytes read + bytes written per second"
        ),
        "buffer_bytes": size,
        "last_level_cache_bytes": cache,
        "threads": threads,
        "samples_gb_per_s": [round(s / 1e9, 2) for s in samples],
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
