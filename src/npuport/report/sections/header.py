"""The report's header table: source, overall status, where engine and reference ran, what was not measured."""

from __future__ import annotations

from operator import itemgetter

from npuport.report.context import ReportContext
from npuport.report.formatting import status_cell
from npuport.report.mdtext import Md
from npuport.report.sections.adaptation import source_text
from npuport.report.verdicts import NOT_MEASURED, Verdict, check_label


def header(r: ReportContext, rows: list[Verdict], overall: str) -> Md:
    t, docs = r.t, r.docs
    missing = [check_label(t, v.check) for v in rows if v.status == NOT_MEASURED]
    items = [
        (t("head.source"), source_text(docs.manifest) if docs.manifest else t("word.not_measured")),
        (t("head.status"), status_cell(t, overall)),
        (t("head.engine"), docs.smoke.value("platform", "device", default=r.f.missing)),
        (t("head.reference"), docs.baseline.value("platform", "device", default=r.f.missing)),
        (t("head.not_measured"), Md("; ".join(missing)) if missing else t("word.none")),
    ]
    return r.table(items, [("col.item", itemgetter(0)), ("col.value", itemgetter(1))])
