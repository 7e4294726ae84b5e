"""Section 11, appendix: size and sha256 of every artifact file read, so a reader can tell which run it shows."""

from __future__ import annotations

import hashlib
from pathlib import Path

from npuport.report.context import ReportContext
from npuport.report.mdtext import Md, code


def appendix(r: ReportContext) -> Md:
    t, f = r.t, r.f

    def size(path: Path):
        return f.bytes(path.stat().st_size) if path.is_file() else t("word.absent")

    def digest(path: Path):
        return code(hashlib.sha256(path.read_bytes()).hexdigest()[:16]) if path.is_file() else ""

    columns = [
        ("col.artifact", lambda path: code(path.as_posix())),
        ("col.size", size),
        ("col.sha256", digest),
    ]
    return r.table(r.inputs.artifact_files().values(), columns)
