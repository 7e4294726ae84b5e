"""Section 4.4, deployment configurations (compare.json: deployments; smoke.json: deployments): the configuration the
report judges, and every other one beside it, each against the reference and floor and against the deployed one."""

from __future__ import annotations

from npuport.report.artifacts import Doc
from npuport.report.context import ReportContext
from npuport.report.formatting import status_cell
from npuport.report.mdtext import Md, code
from npuport.report.verdicts import FAILED, NOT_MEASURED, PASSED, format_ratio

EAGER = "enforce_eager=true"


def deployments(r: ReportContext) -> dict:
    matrix = r.docs.compare.part("deployments")
    rows = matrix.records("configurations")
    return {
        "judged": judged(r),
        "served": served(r, "deploy.served"),
        "served_tasks": served(r, "deploy.served_tasks") if _tasks_through_server(r) else None,
        "table": _table(r, rows) if rows else None,
        "reason": None if rows else _why_none(r),
        "method": matrix.get("method"),
        "spread": matrix.value("spread", "attn_implementation"),
        "graph_path": graph_path_finding(r),
    }


def _configuration(r: ReportContext, engine: Doc) -> dict:
    """The words for a configuration: graphs, prefix caching, chunked prefill, tensor parallel, KV cache."""
    f = r.f

    def setting(key: str) -> str:
        value = engine.get(key)
        return r.t("deploy.vllm_default") if value is None else f.value(value)

    return {
        "graphs": r.t("deploy.eager") if engine.get("enforce_eager") else r.t("deploy.compiled"),
        "prefix": setting("enable_prefix_caching"),
        "chunked": setting("enable_chunked_prefill"),
        "tp": f.value(engine.get("tensor_parallel_size")),
        "kv": f.value(engine.get("kv_cache_dtype") or "auto"),
    }


def judged(r: ReportContext) -> Md:
    """One sentence: the configuration sections 4.1 and 5.1-5.4 judge (the engine section as `vllm serve` runs it)."""
    return r.t("deploy.judged", **_configuration(r, r.docs.smoke.part("settings").part("engine")))


def served(r: ReportContext, key: str) -> Md | None:
    """The configuration sections 5.6 and 5.7 judge: the engine settings the bench stage started its server with
    (bench.json: settings.engine, the flags of its command line), None when no server ran."""
    bench = r.docs.bench
    if not bench.part("server").get("command_ran"):
        return None
    return r.t(key, **_configuration(r, bench.part("settings").part("engine")))


def _tasks_through_server(r: ReportContext) -> bool:
    """lm-eval's engine side ran against the bench stage's server (its command names the server's URL)."""
    url, command = r.docs.bench.part("server").get("url"), r.docs.accuracy.part("engine").get("command")
    return isinstance(url, str) and isinstance(command, str) and url in command


def _why_none(r: ReportContext) -> Md:
    compare = r.docs.compare
    if not compare:
        return r.t("why.artifact_missing", artifact="compare.json")
    if compare.get("status") == NOT_MEASURED:
        return Md(str(compare.get("reason") or r.t("word.no_reason")))
    return r.t("deploy.none")


def row_status(row: Doc) -> str:
    status = row.get("status")
    return status if status in (PASSED, FAILED) else NOT_MEASURED


def _what(r: ReportContext, row: Doc) -> Md:
    differs = [code(d) for d in row.get("differs") or []]
    workload = row.part("workload")
    kind = workload.get("kind")
    if kind == "batch":
        differs.append(r.t("deploy.batch", n=workload.get("concurrent")))
    elif kind == "prefix_hit":
        differs.append(r.t("deploy.prefix", n=workload.get("prefix_tokens")))
    return Md("; ".join(str(d) for d in differs) or r.t("deploy.same"))


def _name(r: ReportContext, row: Doc) -> Md:
    description = row.get("description")
    return Md(f"{code(row.get('name'))}" + (f" — {r.f.value(description)}" if description else ""))


def _ran(r: ReportContext, row: Doc) -> str:
    execution = row.part("execution")
    if not execution:
        return "—"
    steps = execution.get("steps") or []
    parts = [r.t("deploy.positions", n=r.f.num(execution.get("positions_computed")), steps=", ".join(map(str, steps)))]
    if (execution.get("max_requests_in_step") or 0) > 1:
        parts.append(r.t("deploy.in_step", n=execution.get("max_requests_in_step")))
    if execution.get("cached_tokens"):
        parts.append(r.t("deploy.cached", n="/".join(map(str, execution["cached_tokens"]))))
    return "; ".join(str(p) for p in parts)


def _worst(checks: list[Doc], key: str = "ratio_to_floor") -> str:
    values = [c.get(key) for c in checks if isinstance(c.get(key), int | float)]
    return f"×{format_ratio(max(values))}" if values else "—"


def _deployed_ratio(checks: list[Doc]) -> str:
    values = [
        c["deployed_value"] / c["floor"] for c in checks if c.get("deployed_value") is not None and c.get("floor")
    ]
    return f"×{format_ratio(max(values))}" if values else "—"


def _greedy(r: ReportContext, row: Doc) -> str:
    greedy = row.part("greedy")
    if not greedy.get("compared"):
        return "—"
    text = f"{greedy.get('identical')}/{greedy.get('compared')}"
    if greedy.get("first_divergence") is not None:
        text += " " + str(r.t("deploy.first_divergence", at=greedy.get("first_divergence")))
    return text


def _table(r: ReportContext, rows: list[Doc]) -> Md:
    columns = [
        ("col.configuration", lambda row: _name(r, row)),
        ("col.differs", lambda row: _what(r, row)),
        ("col.ran", lambda row: _ran(r, row)),
        ("col.to_floor", lambda row: _worst(row.records("gates"))),
        ("col.deployed_to_floor", lambda row: _deployed_ratio(row.records("gates"))),
        ("col.to_spread", lambda row: _worst(row.part("differential").records("gates"))),
        ("col.greedy", lambda row: _greedy(r, row)),
        ("col.result", lambda row: _result(r, row)),
    ]
    return r.table(rows, columns)


def _result(r: ReportContext, row: Doc) -> Md:
    cell = status_cell(r.t, row_status(row))
    reason = row.get("reason")
    return Md(f"{cell}" + (f" — {r.f.value(reason)}" if reason else ""))


def graph_path_finding(r: ReportContext) -> Md | None:
    """The plain sentence when the deployed (compiled) configuration fails and the eager one passes."""
    for row in r.docs.compare.part("deployments").records("configurations"):
        if EAGER in (row.get("differs") or []) and row.get("fault_on") == "the deployed configuration":
            failing = [g for g in row.records("gates") if g.get("deployed_passed") is False]
            gates = ", ".join(g.get("threshold", "?") for g in failing)
            return r.t("deploy.graph_path", name=code(row.get("name")), gates=code(gates or "?"))
    return None
