"""Hash of the library modules a stage uses, passed to its rule as a param.

Snakemake reruns a job when its script changes, not when an imported module does; a
hash of the modules a stage imports, given as a ``params:`` value, closes that gap.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def module_hash(*modules: str) -> str:
    """sha256 (first 16 hex digits) over the source of the named npuport modules."""
    digest = hashlib.sha256()
    for module in sorted(set(modules)):
        path = PACKAGE_DIR / f"{module}.py"
        digest.update(module.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
