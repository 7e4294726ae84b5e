"""The remote sources by ``source.kind``, imported by name so that the download's code hash covers them."""

from __future__ import annotations

from types import ModuleType

# worker: the child-process entry that run_worker starts with `python -m`
from npuport.download.sources import git, hf, modelscope, worker  # noqa: F401

SOURCES: dict[str, ModuleType] = {"git": git, "hf": hf, "modelscope": modelscope}
