"""The remote sources by ``source.kind``, imported by name so that the download's code hash covers them."""

from __future__ import annotations

from types import ModuleType

from npuport.download.sources import git, hf, modelscope

SOURCES: dict[str, ModuleType] = {"git": git, "hf": hf, "modelscope": modelscope}
