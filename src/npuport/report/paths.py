"""The paths the report rules declare (inputs, outputs, stage targets), exactly as Snakemake hands them over."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from npuport.core.errors import NpuportError
from npuport.download.manifest import MANIFEST_NAME

# The record the fuse stage writes into the fused model directory (npuport.weights.fuse writes it by this name;
# that module has no constant for it, and importing it would pull torch into the report stage).
FUSE_RECORD_NAME = "fuse.json"
# The fused model's tokenizer, to show divergent tokens as text.
TOKENIZER_NAME = "tokenizer.json"


def _named(mapping: Mapping[str, Any], names: Iterable[str], what: str) -> dict[str, Any]:
    """``mapping`` restricted to ``names``; NpuportError when one is missing or another one is given."""
    names = list(names)
    missing = [n for n in names if n not in mapping]
    unknown = [n for n in mapping if n not in names]
    if missing or unknown:
        problem = f"missing {', '.join(missing) or '-'}; unknown {', '.join(unknown) or '-'}"
        raise NpuportError(what, f"the report rule's {what} do not match the contract: {problem}")
    return {name: mapping[name] for name in names}


@dataclass(frozen=True, kw_only=True)
class ReportInputs:
    """The declared inputs of report_model: one path per artifact, and the stages' benchmark files in order."""

    download: Path
    introspect: Path
    config: Path
    repair: Path
    model: Path
    env: Path
    smoke: Path
    baseline: Path
    compare: Path
    layers: Path  # layers.json; its content may be "not measured" (the report says so)
    bench: Path  # bench.json: the serve check and the load ladder
    accuracy: Path  # accuracy.json: the lm-eval tasks on both sides and their gate
    benchmarks: tuple[Path, ...] = ()

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> ReportInputs:
        """From ``snakemake.input`` as a dict (names -> paths; ``benchmarks`` a list of paths)."""
        given = _named(mapping, [f.name for f in fields(cls)], "inputs")
        benchmarks = tuple(Path(p) for p in given.pop("benchmarks"))
        return cls(**{name: Path(value) for name, value in given.items()}, benchmarks=benchmarks)

    @property
    def manifest(self) -> Path:
        return self.download / MANIFEST_NAME

    @property
    def fuse(self) -> Path:
        return self.model / FUSE_RECORD_NAME

    @property
    def tokenizer(self) -> Path:
        return self.model / TOKENIZER_NAME

    def artifact_files(self) -> dict[str, Path]:
        """Artifact key -> the JSON file the report reads, in pipeline order."""
        return {
            "manifest": self.manifest,
            "introspect": self.introspect,
            "config": self.config,
            "repair": self.repair,
            "fuse": self.fuse,
            "env": self.env,
            "smoke": self.smoke,
            "baseline": self.baseline,
            "compare": self.compare,
            "layers": self.layers,
            "bench": self.bench,
            "accuracy": self.accuracy,
        }

    def directory(self) -> str:
        """The directory every artifact lies under, as the report names it (``dir/``); "" when they share none."""
        paths = [str(getattr(self, f.name)) for f in fields(self) if f.name != "benchmarks"]
        try:
            common = Path(os.path.commonpath(paths))
        except ValueError:  # absolute and relative paths mixed
            return ""
        return "" if str(common) in ("", ".") else f"{common.as_posix()}/"


@dataclass(frozen=True)
class ReportOutputs:
    """The declared outputs of report_model."""

    report: Path
    plots: Path
    summary: Path | None = None

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> ReportOutputs:
        given = _named(mapping, [f.name for f in fields(cls)], "outputs")
        return cls(**{name: None if value is None else Path(value) for name, value in given.items()})
