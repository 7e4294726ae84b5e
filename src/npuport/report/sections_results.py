"""Report sections 5-11: accuracy and performance, runtime issues, fixes, verification, conclusion, cost, appendix."""

from __future__ import annotations

import hashlib
import json
import shlex

from npuport.report.artifacts import ARTIFACTS, Inputs, mark, mean, ratio, status_cell
from npuport.report.mdtext import Md, code, fence, table, text
from npuport.report.pipeline_cost import stage_costs, totals
from npuport.report.verdicts import NOT_MEASURED, Verdict, dig, format_value

CLASS_SYMBOLS = {"identical": "✅", "benign divergence": "✅", "real divergence": "❌"}
SEVERITY_SYMBOLS = {"error": "❌", "warning": "⚠", "info": "ℹ"}

# -- 5.1 performance ------------------------------------------------------------------------------------------


def _speed(doc: dict) -> dict:
    prompts = [p for p in doc.get("prompts") or [] if isinstance(p, dict)]
    throughput = doc.get("throughput") or {}
    return {
        "ttft": mean(p.get("ttft_s") for p in prompts),
        "tpot": mean(p.get("tpot_s") for p in prompts),
        "single": dig(throughput, "single", "tokens_per_s"),
        "batch": dig(throughput, "batch", "tokens_per_s"),
    }


def performance(r: Inputs) -> dict:
    t, f = r.t, r.f
    smoke, base = r.doc("smoke"), r.doc("baseline")
    s, b = _speed(smoke), _speed(base)
    load_e, load_b = smoke.get("load_seconds"), base.get("load_seconds")
    rows = [
        (t("perf.device"), dig(smoke, "platform", "device", default=f.missing),
         dig(base, "platform", "device", default=f.missing), "", "platform.device"),
        (t("perf.load"), f.seconds(load_e), f.seconds(load_b), f.speed(ratio(load_b, load_e)), "load_seconds"),
        (t("perf.warmup"), f.seconds(dig(smoke, "warmup", "latency_s")), f.seconds(dig(base, "warmup", "latency_s")),
         "", "warmup.latency_s"),
        (t("perf.ttft"), f.ms(s["ttft"]), f.ms(b["ttft"]), f.speed(ratio(b["ttft"], s["ttft"])), "prompts[].ttft_s"),
        (t("perf.tpot"), f.ms(s["tpot"]), f.ms(b["tpot"]), f.speed(ratio(b["tpot"], s["tpot"])), "prompts[].tpot_s"),
        (t("perf.single"), _throughput(r, smoke, "single"), _throughput(r, base, "single"),
         f.speed(ratio(s["single"], b["single"])), "throughput.single"),
        (t("perf.batch"), _throughput(r, smoke, "batch"), _throughput(r, base, "batch"),
         f.speed(ratio(s["batch"], b["batch"])), "throughput.batch"),
        (t("perf.kv"), _kv(r, smoke.get("kv_cache") or {}), t("perf.kv_baseline"), "", "kv_cache"),
    ]  # fmt: skip
    headers = [t("col.metric"), t("col.engine"), t("col.baseline"), t("col.speedup"), t("col.field")]
    return {
        "table": table([(a, b_, c, d, code(e)) for a, b_, c, d, e in rows], headers),
        "speedup": f.speed(ratio(s["single"], b["single"])) or f.missing,
        "per_prompt": _per_prompt(r, smoke, base),
        "timing_method": [(code(k), v) for k, v in (smoke.get("timing_method") or {}).items()],
        "baseline_method": [(code(k), v) for k, v in (base.get("timing_method") or {}).items()],
        "kv_source": dig(smoke, "kv_cache", "gib_source"),
    }


def _throughput(r: Inputs, doc: dict, kind: str) -> str:
    f = r.f
    measured = dig(doc, "throughput", kind, default={})
    if not isinstance(measured, dict) or measured.get("tokens_per_s") is None:
        return f.missing
    count, seconds = f.value(measured.get("tokens")), f.seconds(measured.get("seconds"))
    return f"{f.num(measured['tokens_per_s'])} tok/s ({count} tok / {seconds})"


def _kv(r: Inputs, kv: dict):
    if not kv.get("tokens"):
        return r.f.missing
    gib = kv.get("gib")
    return r.t("perf.kv_value", tokens=r.f.num(kv["tokens"]), gib=f"{r.f.num(gib)} GiB" if gib else r.f.missing)


def _per_prompt(r: Inputs, smoke: dict, base: dict) -> Md | None:
    t, f = r.t, r.f
    engine = [p for p in smoke.get("prompts") or [] if isinstance(p, dict)]
    reference = {p.get("prompt"): p for p in base.get("prompts") or [] if isinstance(p, dict)}
    prompts = [p.get("prompt") for p in engine] or list(reference)
    if not prompts:
        return None
    by_prompt = {p.get("prompt"): p for p in engine}
    rows = []
    for i, prompt in enumerate(prompts, 1):
        e, b = by_prompt.get(prompt, {}), reference.get(prompt, {})
        tokens = " / ".join(f.value(side.get("num_tokens")) if side else f.missing for side in (e, b))
        rows.append((i, tokens, f.ms(e.get("ttft_s")), f.ms(e.get("tpot_s")), f.seconds(e.get("latency_s")),
                     f.ms(b.get("ttft_s")), f.ms(b.get("tpot_s")), f.seconds(b.get("latency_s"))))  # fmt: skip
    headers = ["#", t("col.tokens_both"), t("col.e_ttft"), t("col.e_tpot"), t("col.e_latency"),
               t("col.b_ttft"), t("col.b_tpot"), t("col.b_latency")]  # fmt: skip
    return table(rows, headers)


# -- 5.2-5.4 accuracy -----------------------------------------------------------------------------------------


def accuracy(r: Inputs, tokenizer=None) -> dict:
    t, f = r.t, r.f
    compare = r.doc("compare")
    settings = compare.get("settings") or {}
    status = {"passed": "passed", "failed": "failed"}.get(compare.get("status"), NOT_MEASURED)
    described = t(
        "acc.settings",
        window=f.value(settings["window"]) if settings.get("window") else t("acc.whole_output"),
        gap=f.value(settings.get("benign_logprob_gap")),
        dtype=f.value(settings.get("reference_dtype")),
        engine=dig(compare, "engine", "smoke", "device", default="?"),
        reference=dig(compare, "engine", "baseline", "device", default="?"),
    )
    return {
        "status_cell": status_cell(t, status),
        "reason": compare.get("reason") or (None if compare else t("why.artifact_missing", artifact="compare.json")),
        "settings": described if compare else None,
        "table": _comparison(r, compare.get("prompts") or [], tokenizer),
        "checks": _checks(r, compare.get("checks") or []),
        "perplexity": _perplexity(r, compare.get("overall") or {}),
    }


def _comparison(r: Inputs, prompts: list, tokenizer) -> Md | None:
    t, f = r.t, r.f
    rows = []
    for i, p in enumerate(prompts, 1):
        tf = p.get("teacher_forced") or {}
        rows.append((i, p.get("prompt"), f.value(p.get("compared")), f.value(p.get("matched")),
                     _classification(r, p.get("classification")), _divergence(r, p.get("divergence"), tokenizer),
                     f.value(tf.get("positions")), f.metric(tf.get("top1_agreement")),
                     f.metric(tf.get("mean_abs_logprob_diff")), f.metric(tf.get("max_abs_logprob_diff")),
                     f.metric(tf.get("mean_topk_kl"))))  # fmt: skip
    headers = ["#", t("col.prompt"), t("col.compared"), t("col.matched"), t("col.classification"),
               t("col.divergence"), t("col.positions"), t("col.top1"), t("col.mean_diff"), t("col.max_diff"),
               t("col.kl")]  # fmt: skip
    return table(rows, headers) if rows else None


def _classification(r: Inputs, value):
    if value is None:
        return r.f.missing
    key = "class." + str(value).replace(" ", "_")
    label = r.t(key) if r.t.has(key) else text(value)
    return Md(f"{CLASS_SYMBOLS.get(value, '⚠')} {label}")


def token_text(token_id, tokenizer) -> str:
    """``id "text"`` when the model's tokenizer is at hand, else the id."""
    if tokenizer is None or not isinstance(token_id, int):
        return str(token_id)
    try:
        return f"{token_id} {json.dumps(tokenizer.decode([token_id]), ensure_ascii=False)}"
    except Exception:  # noqa: BLE001 - an id the tokenizer cannot decode is shown as the id
        return str(token_id)


def _divergence(r: Inputs, divergence, tokenizer):
    if not isinstance(divergence, dict):
        return "—"
    e, ref = divergence.get("engine") or {}, divergence.get("reference") or {}

    def side(info):
        return r.t("acc.no_token") if info.get("token_id") is None else token_text(info["token_id"], tokenizer)

    return r.t(
        "acc.divergence",
        pos=divergence.get("position"),
        e_tok=side(e),
        e_lp=r.f.metric(e.get("token_logprob")),
        r_tok=side(ref),
        r_lp=r.f.metric(ref.get("token_logprob")),
        gap=r.f.metric(divergence.get("logprob_gap")),
    )


def _checks(r: Inputs, checks: list) -> Md | None:
    t, f = r.t, r.f
    rows = [
        (code(c.get("threshold")), code(c.get("metric")), f.metric(c.get("value")),
         f"{c.get('op', '?')} {f.value(c.get('limit'))}", mark(c.get("passed")))
        for c in checks
    ]  # fmt: skip
    headers = [t("col.threshold"), t("col.metric"), t("col.value"), t("col.limit"), t("col.result")]
    return table(rows, headers) if rows else None


def _perplexity(r: Inputs, overall: dict) -> Md:
    t, f = r.t, r.f
    scored = overall.get("text_tokens")
    if scored is None:
        ids = dig(r.docs, "smoke", "perplexity", "token_ids")
        scored = len(ids) if isinstance(ids, list) else None
    rows = [
        (t("acc.ppl_engine"), f.metric(overall.get("perplexity_engine")), "perplexity_engine"),
        (t("acc.ppl_reference"), f.metric(overall.get("perplexity_reference")), "perplexity_reference"),
        (t("acc.ppl_rel_diff"), f.metric(overall.get("perplexity_rel_diff")), "perplexity_rel_diff"),
        (t("acc.text_mean_diff"), f.metric(overall.get("text_mean_abs_logprob_diff")), "text_mean_abs_logprob_diff"),
        (t("acc.text_max_diff"), f.metric(overall.get("text_max_abs_logprob_diff")), "text_max_abs_logprob_diff"),
        (t("acc.ppl_tokens"), f.value(scored) if scored is not None else f.missing, "text_tokens"),
    ]
    return r.facts([(a, b, f"compare.json: overall.{c}") for a, b, c in rows], "col.metric")


# -- 6-7 runtime issues and their fixes -----------------------------------------------------------------------


def issues(r: Inputs) -> list[dict]:
    """Host diagnostics (env.json) first, then what the pipeline's own stages found; each with its fix."""
    found = [_diagnostic(d) for d in r.doc("env").get("diagnostics") or [] if isinstance(d, dict)]
    found += _config_issues(r) + _stage_issues(r) + _threshold_issues(r)
    for item in found:
        severity = item["severity"] if item["severity"] in SEVERITY_SYMBOLS else "warning"
        item["label"] = Md(f"{SEVERITY_SYMBOLS[severity]} {r.t('severity.' + severity)}: {text(item['summary'])}")
    return found


def _issue(issue_id, severity, summary, evidence, fix, source) -> dict:
    return {"id": issue_id, "severity": severity, "summary": summary, "evidence": [text(e) for e in evidence],
            "fix": text(fix), "source": source}  # fmt: skip


def _diagnostic(d: dict) -> dict:
    return _issue(d.get("id", "?"), d.get("severity", "warning"), d.get("summary", ""), d.get("evidence") or [],
                  d.get("fix") or "", "env.json: diagnostics")  # fmt: skip


def _config_issues(r: Inputs) -> list[dict]:
    t, f = r.t, r.f
    repaired = r.doc("repair").get("repaired") or []
    found = []
    for m in r.doc("introspect").get("mismatches") or []:
        name = m.get("field")
        fixed = name in repaired
        evidence = t("issue.mismatch_evidence", declared=f.value(m.get("declared")), derived=f.value(m.get("derived")))
        fix = t("fix.repaired" if fixed else "fix.not_repaired", field=code(name))
        found.append(_issue(f"config_mismatch_{name}", "error" if fixed else "warning",
                            t("issue.mismatch", field=code(name)), [evidence], fix,
                            "introspect.json: mismatches; repair.json: repaired"))  # fmt: skip
    return found


def _stage_issues(r: Inputs) -> list[dict]:
    t = r.t
    found = []
    for stage in ("smoke", "baseline"):
        doc = r.doc(stage)
        if doc and doc.get("status") != "ok":
            status = str(doc.get("status", "?"))
            rerun = code(r.snakemake(f"results/{r.model}/{stage}.json", "--forcerun", stage))
            fix = t("fix.stage", log=code(f"logs/{r.model}/{stage}.log"), command=rerun)
            summary = t("issue.stage", stage=stage, status=status)
            issue_id = f"{stage}_{status.replace(' ', '_')}"
            found.append(_issue(issue_id, "error", summary, [doc.get("reason") or "-"], fix, f"{stage}.json: status"))
    serve = r.doc("smoke").get("serve") or {}
    if serve.get("status") == "failed":
        found.append(_issue("serve_failed", "error", t("issue.serve"), [serve.get("reason") or "-"], t("fix.serve"),
                            "smoke.json: serve.status, serve.reason"))  # fmt: skip
    return found


def _threshold_issues(r: Inputs) -> list[dict]:
    t = r.t
    found = []
    for c in r.doc("compare").get("checks") or []:
        if c.get("passed") is False:
            evidence = f"{c.get('metric')} = {format_value(c.get('value'))}, required {c.get('op')} {c.get('limit')}"
            found.append(_issue(f"threshold_{c.get('threshold')}", "error",
                                t("issue.threshold", name=code(c.get("threshold"))), [evidence], t("fix.threshold"),
                                "compare.json: checks"))  # fmt: skip
    return found


# -- 8 verification, 9 conclusion, 10 cost, 11 appendix --------------------------------------------------------

_SHA_CHECK = (
    "import hashlib, json; m = json.load(open('manifest.json')); "
    "print(all(hashlib.sha256(open(f['path'], 'rb').read()).hexdigest() == f['sha256'] for f in m['files']))"
)


def verification(r: Inputs) -> list[tuple[Md, Md]]:
    t, m = r.t, r.model
    compare = f"results/{m}/compare.json"
    items = [
        (t("verify.dry_run"), r.snakemake("-n", f"results/{m}/report.md")),
        (t("verify.changes"), r.snakemake("--list-changes", "code") + "\n" + r.snakemake("--list-changes", "params")),
        (t("verify.engine"), r.snakemake(compare, "--forcerun", "smoke", "baseline")),
        (t("verify.compare"), r.snakemake(compare, "--forcerun", "compare")),
        (t("verify.probe"), r.snakemake(f"results/{m}/env.json", "--forcerun", "env_probe")),
        (t("verify.all"), r.snakemake(f"results/{m}/report.md", "--forceall")),
        (t("verify.html"), r.snakemake("--report", "results/report.html")),
        (t("verify.sha"), f'cd {shlex.quote(f"results/{m}/download")} && python -c "{_SHA_CHECK}"'),
    ]
    return [(label, fence(command, "bash")) for label, command in items]


def conclusion_table(r: Inputs, rows: list[Verdict]) -> Md:
    t = r.t
    body = [(t("check." + v.check), status_cell(t, v.status), v.detail, code(v.evidence)) for v in rows]
    return table(body, [t("col.check"), t("col.result"), t("col.measured"), t("col.evidence")])


def key_measurements(r: Inputs) -> Md:
    """The measured numbers a reader asks first, each beside its reference value and its source (as the
    reference report's closing table, but every value read from an artifact)."""
    t, f = r.t, r.f
    smoke, base, compare = r.doc("smoke"), r.doc("baseline"), r.doc("compare")
    s, b = _speed(smoke), _speed(base)
    prompts = compare.get("prompts") or []
    matched = f"{sum(p.get('matched') or 0 for p in prompts)} / {sum(p.get('compared') or 0 for p in prompts)}"
    overall = compare.get("overall") or {}
    limits = {c.get("metric"): f"{c.get('op')} {f.value(c.get('limit'))}" for c in compare.get("checks") or []}
    rows = [
        (t("perf.load"), f.seconds(smoke.get("load_seconds")), f.seconds(base.get("load_seconds")),
         "smoke.json, baseline.json: load_seconds"),
        (t("perf.single"), _throughput(r, smoke, "single"), _throughput(r, base, "single"),
         "smoke.json, baseline.json: throughput.single"),
        (t("perf.tpot"), f.ms(s["tpot"]), f.ms(b["tpot"]), "smoke.json, baseline.json: prompts[].tpot_s"),
        (t("key.weights"), f.bytes(r.doc("fuse").get("total_bytes")), "", "model/fuse.json: total_bytes"),
        (t("perf.kv"), _kv(r, smoke.get("kv_cache") or {}), "", "smoke.json: kv_cache"),
        (t("key.tokens"), matched if prompts else f.missing, "", "compare.json: prompts[].matched, compared"),
        (t("col.mean_diff"), f.metric(overall.get("mean_abs_logprob_diff")),
         limits.get("mean_abs_logprob_diff", ""), "compare.json: overall.mean_abs_logprob_diff"),
        (t("key.perplexity"), f.metric(overall.get("perplexity_rel_diff")),
         limits.get("perplexity_rel_diff", ""), "compare.json: overall.perplexity_rel_diff"),
    ]  # fmt: skip
    headers = [t("col.metric"), t("col.measured_value"), t("col.basis"), t("col.source")]
    return table([(a, b_, c, code(d)) for a, b_, c, d in rows], headers)


def cost(r: Inputs) -> Md | None:
    """Wall time, CPU time, peak RSS and I/O per stage from the benchmark files (this stage's own is not done yet)."""
    t, f = r.t, r.f
    costs = stage_costs(r.directory / "benchmarks", skip=("report_model",))
    if costs.empty:
        return None
    records = costs.astype(object).where(costs.notna(), None).to_dict("records")
    rows = [(code(c["stage"]), f.seconds(c["wall_s"]), f.seconds(c["cpu_s"]), f.mb(c["max_rss_mb"]),
             f.mb(c["io_in_mb"]), f.mb(c["io_out_mb"]), f.num(c["mean_load"])) for c in records]  # fmt: skip
    total = totals(costs)
    rows.append((t("cost.total"), f.seconds(total["wall_s"]), f.seconds(total["cpu_s"]), f.mb(total["max_rss_mb"]),
                 "", "", ""))  # fmt: skip
    headers = [t("col.stage"), t("col.wall"), t("col.cpu"), t("col.rss"), t("col.io_in"), t("col.io_out"),
               t("col.load")]  # fmt: skip
    return table(rows, headers)


def appendix(r: Inputs) -> Md:
    """Size and sha256 of every artifact read, so a reader can tell which run the report shows."""
    t, f = r.t, r.f
    rows = []
    for rel in ARTIFACTS.values():
        path = r.directory / rel
        shown = code(f"results/{r.model}/{rel}")
        if path.is_file():
            rows.append((shown, f.bytes(path.stat().st_size), code(hashlib.sha256(path.read_bytes()).hexdigest()[:16])))
        else:
            rows.append((shown, t("word.absent"), ""))
    return table(rows, [t("col.artifact"), t("col.size"), t("col.sha256")])
