"""The artifacts one report reads, each loaded once into a ``Doc``; an absent artifact reads as empty."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from npuport.core.atomic import read_json
from npuport.report.paths import ReportInputs

log = logging.getLogger(__name__)


def dig(document, *path, default=None):
    """``document[path[0]][path[1]]...``, or ``default`` where any step is missing or of the wrong type."""
    value = document
    for key in path:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
            value = value[key]
        else:
            return default
    return value if value is not None else default


@dataclass(frozen=True)
class Doc:
    """A JSON object of an artifact (or a part of one). Lookups never fail: what it does not hold is None,
    an empty ``part`` or no ``records``, so every section falls back to "not measured"."""

    data: Mapping[str, Any] = field(default_factory=dict)
    present: bool = False  # the artifact (or part) exists, even if empty

    @classmethod
    def of(cls, value) -> Doc:
        return cls(value, True) if isinstance(value, dict) else cls()

    def __bool__(self) -> bool:
        return bool(self.data)

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def __getitem__(self, key: str):
        return self.data[key]

    def get(self, key: str, default=None):
        return self.data.get(key, default)

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(self.data.items())

    def value(self, *path, default=None):
        """The value at ``path`` (keys and list indices), ``default`` where absent or None."""
        return dig(self.data, *path, default=default)

    def part(self, *path) -> Doc:
        """The object at ``path``; empty where absent or not an object."""
        return Doc.of(dig(self.data, *path))

    def records(self, *path) -> list[Doc]:
        """The objects of the list at ``path`` (entries that are not objects left out)."""
        value = dig(self.data, *path)
        return [Doc(item, True) for item in value if isinstance(item, dict)] if isinstance(value, list) else []

    def array(self, *path) -> list:
        """The list at ``path``; [] where absent or not a list."""
        value = dig(self.data, *path)
        return value if isinstance(value, list) else []

    @property
    def raw(self) -> dict | None:
        """The object as loaded, None when the artifact is absent (what the verdicts read)."""
        return dict(self.data) if self.present else None


@dataclass(frozen=True)
class Artifacts:
    """Every artifact of one model (download/manifest.json and model/fuse.json included), in pipeline order."""

    manifest: Doc
    introspect: Doc
    config: Doc
    repair: Doc
    fuse: Doc
    env: Doc
    smoke: Doc
    baseline: Doc
    compare: Doc
    layers: Doc
    bench: Doc
    accuracy: Doc

    def raw(self) -> dict[str, dict | None]:
        """Artifact key -> its object as loaded, None where absent."""
        return {f.name: getattr(self, f.name).raw for f in fields(self)}


def load_artifacts(inputs: ReportInputs) -> Artifacts:
    """Read exactly the declared artifact files; a missing file is an absent artifact (logged)."""
    docs = {}
    for key, path in inputs.artifact_files().items():
        if Path(path).is_file():
            docs[key] = Doc.of(read_json(path))
        else:
            log.info("%s is absent: the report shows what it would hold as not measured", path)
            docs[key] = Doc()
    return Artifacts(**docs)
