"""Section 8, verification: the commands that check the artifacts are current, rerun stages, check the download."""

from __future__ import annotations

import shlex

from npuport.download.manifest import MANIFEST_NAME
from npuport.report.context import ReportContext
from npuport.report.mdtext import Md, fence

_SHA_CHECK = (
    f"import hashlib, json; m = json.load(open('{MANIFEST_NAME}')); "
    "print(all(hashlib.sha256(open(f['path'], 'rb').read()).hexdigest() == f['sha256'] for f in m['files']))"
)
HTML_REPORT_NAME = "report.html"


def html_report(r: ReportContext) -> str:
    """Where the HTML report of all models goes: beside the index, one level above the model's directory."""
    return (r.outputs.report.parent.parent / HTML_REPORT_NAME).as_posix()


def verification(r: ReportContext) -> list[tuple[Md, Md]]:
    t, inputs, report = r.t, r.inputs, r.outputs.report
    items = [
        (t("verify.dry_run"), r.snakemake("-n", report)),
        (t("verify.engine"), r.snakemake(inputs.compare, "--forcerun", "smoke", "baseline")),
        (t("verify.compare"), r.snakemake(inputs.compare, "--forcerun", "compare")),
        (t("verify.probe"), r.snakemake(inputs.env, "--forcerun", "env_probe")),
        (t("verify.all"), r.snakemake(report, "--forceall")),
        (t("verify.html"), r.snakemake("--report", html_report(r))),
        (t("verify.sha"), f'cd {shlex.quote(inputs.download.as_posix())} && python -c "{_SHA_CHECK}"'),
    ]
    return [(label, fence(command, "bash")) for label, command in items]
