"""What every report section reads: the model's artifacts, the declared paths, the catalog and the formatter."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from operator import itemgetter
from typing import Any

from npuport.report.artifacts import Artifacts
from npuport.report.formatting import Formatter
from npuport.report.mdtext import Md, code
from npuport.report.messages import Messages
from npuport.report.paths import ReportInputs, ReportOutputs
from npuport.report.tables import Column, column_table

DEFAULT_CONFIGFILE = "config/config.yaml"  # Snakefile's own configfile: the commands need not name it


@dataclass(frozen=True)
class ReportContext:
    """One model's artifacts and declared paths, and what the sections need to word and format them."""

    model: str
    _: KW_ONLY
    inputs: ReportInputs
    outputs: ReportOutputs
    docs: Artifacts
    t: Messages
    configfiles: tuple[str, ...] = ()
    stage_targets: tuple[tuple[str, str], ...] = ()  # (artifact path, rule), in pipeline order
    f: Formatter = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "f", Formatter(self.t))
        extra = tuple(str(c) for c in self.configfiles if c != DEFAULT_CONFIGFILE)
        object.__setattr__(self, "configfiles", extra)
        object.__setattr__(self, "stage_targets", tuple((str(a), str(r)) for a, r in self.stage_targets))

    def snakemake(self, *args: Any) -> str:
        """A snakemake command line for this run (extra config files of the run appended)."""
        extra = [arg for c in self.configfiles for arg in ("--configfile", c)]
        return shlex.join(["snakemake", "--cores", "4", *(str(a) for a in args), *extra])

    def portable(self, command: str) -> str:
        """A command a stage recorded, as it reads on any host: the absolute directory it ran in (the part of a path
        before this model's directory of artifacts as Snakemake declared it, e.g. ``/work/main/``) dropped from every
        path, so the paths are relative to the workflow directory; a Python interpreter given by its absolute path
        reads ``python``."""
        results = re.escape(self.inputs.model.parent.as_posix())  # the model's directory, as Snakemake declared it
        prefixes = set(re.findall(rf"(?<![\w.~-])(/[^\s'\"=,:]*?/)(?={results}(?:[/\s,'\"]|$))", command))
        for prefix in sorted(prefixes, key=len, reverse=True):
            command = re.sub(rf"(?<![\w.~/-]){re.escape(prefix)}", "", command)
        return re.sub(r"^(\S*/)?python[\d.]*(?=\s)", "python", command)

    def table(self, rows, columns: Sequence[Column]) -> Md:
        return column_table(self.t, rows, columns)

    def facts(self, rows, first: str = "col.property") -> Md:
        """A (label, value, source) table; the source column is the artifact field the value comes from."""
        columns = [(first, itemgetter(0)), ("col.value", itemgetter(1)), ("col.source", lambda row: code(row[2]))]
        return self.table(rows, columns)
