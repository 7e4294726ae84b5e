"""Section 4, deployment: the `vllm serve` command and its check (bench.json), the engine's settings and outputs
(smoke.json)."""

from __future__ import annotations

import re
import shlex

from npuport.report.artifacts import Doc
from npuport.report.context import ReportContext
from npuport.report.formatting import mark, stage_status, status_cell
from npuport.report.mdtext import Md, code, fence
from npuport.report.tables import Verbatim


def deployment(r: ReportContext) -> dict:
    smoke = r.docs.smoke
    serve = r.docs.bench.part("serve")
    command = smoke.get("vllm_serve_command") or serve.get("vllm_serve_command")
    command = r.portable(command) if isinstance(command, str) else None
    prompts = smoke.records("prompts")
    failed_log = smoke.get("status") != "ok" and smoke.get("log_tail")
    return {
        "status": smoke.get("status"),
        "status_cell": status_cell(r.t, stage_status(smoke)),
        "reason": smoke.get("reason") if smoke else r.t("why.artifact_missing", artifact=r.inputs.smoke.name),
        "log_tail": fence("\n".join(smoke["log_tail"])) if failed_log else None,
        "serve_command": fence(re.sub(r" (?=--)", " \\\n    ", command), "bash") if command else None,
        "platform": smoke.value("platform", "device"),
        "settings": _settings(r, smoke.part("settings")),
        "outputs": _outputs(r, prompts),
        "full_outputs": [(i, p.get("prompt"), fence(p.get("text") or "", "text")) for i, p in enumerate(prompts, 1)],
        "serve": _serve(r, serve),
    }


def _settings(r: ReportContext, settings: Doc) -> Md | None:
    f = r.f
    rows = []
    for section in ("engine", "generation"):
        rows += [(code(f"{section}.{k}"), f.value(v)) for k, v in settings.part(section).items() if k != "prompts"]
    for key in ("stop_token_ids", "stop_token_ids_source", "prompt_format", "trust_remote_code"):
        if key in settings:
            rows.append((code(key), f.value(settings[key])))
    columns = [("col.setting", lambda row: row[0]), ("col.value", lambda row: row[1])]
    return r.table(rows, columns) if rows else None


def _outputs(r: ReportContext, prompts: list[Doc]) -> Md | None:
    """One row per prompt: the engine's output, its length, time and finish reason."""
    if not prompts:
        return None
    f = r.f
    columns = [
        (Verbatim("#"), lambda row: row[0]),
        ("col.prompt", lambda row: row[1].get("prompt")),
        ("col.output", lambda row: row[1].get("text")),
        ("col.tokens", lambda row: f.value(row[1].get("num_tokens"))),
        ("col.time", lambda row: f.seconds(row[1].get("latency_s"))),
        ("col.finish", lambda row: f.value(row[1].get("finish_reason"))),
    ]
    return r.table(enumerate(prompts, 1), columns)


def _serve(r: ReportContext, serve: Doc) -> dict:
    t, f = r.t, r.f
    ran = serve.get("command_ran")
    ran = shlex.join(str(a) for a in ran) if isinstance(ran, list) else ran
    ran = r.portable(ran) if isinstance(ran, str) else None
    prompts = serve.records("prompts")
    columns = [
        (Verbatim("#"), lambda row: row[0]),
        ("col.prompt", lambda row: row[1].get("prompt")),
        ("col.tokens", lambda row: f.value(row[1].get("completion_tokens"))),
        ("col.time", lambda row: f.seconds(row[1].get("latency_s"))),
        ("col.equal_offline", lambda row: mark(row[1].get("text_equal_offline"))),
    ]
    return {
        "status_cell": status_cell(t, stage_status(serve)),
        "reason": serve.get("reason"),
        "ran": fence(ran, "bash") if ran else None,
        "url": serve.get("url") or "?",
        "startup": f.seconds(serve.get("startup_seconds")),
        "table": r.table(enumerate(prompts, 1), columns) if prompts else None,
    }
