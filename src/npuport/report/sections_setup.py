"""Report sections 1-4: model architecture, environment, adaptation steps, deployment."""

from __future__ import annotations

import re
import shlex

from npuport.report.artifacts import Inputs, mark, stage_status, status_cell
from npuport.report.mdtext import Md, code, fence, table, text
from npuport.report.verdicts import dig

# Artifact (as a Snakemake target under results/<model>/) -> the rule that writes it.
PRODUCERS = (
    ("download", "download"),
    ("introspect.json", "introspect"),
    ("repair.json", "repair_config"),
    ("model", "fuse"),
    ("env.json", "env_probe"),
    ("smoke.json", "smoke"),
    ("baseline.json", "baseline"),
    ("compare.json", "compare"),
    ("report.md", "report_model"),
)
FIELD_SYMBOLS = {"ok": "✅", "repaired": "❌", "not derivable": "⚠"}

# -- 1. model architecture ------------------------------------------------------------------------------------


def architecture(r: Inputs) -> dict:
    t, f = r.t, r.f
    intro, config = r.doc("introspect"), r.doc("config")
    derived = intro.get("derived") or {}
    params = derived.get("parameter_count")
    heads, kv = derived.get("num_attention_heads"), derived.get("num_key_value_heads")
    facts = [
        (t("arch.name"), r.model, "config: models[].name"),
        (t("arch.architecture"), ", ".join(config.get("architectures") or []) or f.missing, "config.json"),
        (t("arch.model_type"), f.value(config.get("model_type")), "config.json"),
        (t("arch.parameters"), _parameters(f, params), "introspect.json: derived.parameter_count"),
        (t("arch.dtype"), f.value(derived.get("dtype")), "introspect.json: derived.dtype"),
        (t("arch.declared_dtype"), f.value(dig(intro, "declared", "dtype")), "introspect.json: declared.dtype"),
        (t("arch.vocab"), f.value(derived.get("vocab_size")), "introspect.json: derived.vocab_size"),
        (t("arch.max_positions"), f.value(config.get("max_position_embeddings")), "config.json"),
        (t("arch.rope"), _rope(f, config), "config.json: rope_scaling / rope_parameters"),
        (t("arch.attention"), _attention(r, heads, kv, derived.get("head_dim")), "introspect.json: derived"),
        (t("arch.mlp"), _mlp(r, config, derived), "config.json: hidden_act; introspect.json: derived"),
        (t("arch.tied"), f.value(derived.get("tie_word_embeddings")), "introspect.json: derived"),
    ]
    return {
        "facts": r.facts(facts),
        "fields": _field_table(r, intro.get("sources") or {}),
        "ambiguities": [_ambiguity(r, a) for a in intro.get("ambiguities") or []],
        "weights": _weights(r, intro, derived),
        "patterns": [code(p) for p in tensor_patterns(r)],
        "notes": [text(n) for n in intro.get("notes") or []],
    }


def _parameters(f, count) -> str:
    if not isinstance(count, int):
        return f.missing
    return f"{f.num(count)} (≈{count / 1e9:.2f} B)" if count >= 1e9 else f"{f.num(count)} (≈{count / 1e6:.2f} M)"


def _rope(f, config: dict) -> str:
    params = config.get("rope_scaling") or config.get("rope_parameters")
    rope_type, theta = None, config.get("rope_theta")
    if isinstance(params, dict):
        nested = [v for v in params.values() if isinstance(v, dict)]  # transformers 5: per attention type
        rope_type = params.get("rope_type") or params.get("type")
        if rope_type is None and nested:
            rope_type = nested[0].get("rope_type") or nested[0].get("type")
        theta = theta if theta is not None else params.get("rope_theta")
    rope_type = rope_type or "default"
    return f"{rope_type} (rope_theta {f.value(theta)})" if theta else rope_type


def _attention(r: Inputs, heads, kv, head_dim):
    if not isinstance(heads, int) or not isinstance(kv, int) or not kv:
        return r.t("arch.attention_unknown")
    if heads == kv:
        return r.t("arch.mha", heads=heads, head_dim=head_dim)
    return r.t("arch.gqa", heads=heads, kv=kv, ratio=heads // kv, head_dim=head_dim)


def _mlp(r: Inputs, config: dict, derived: dict) -> Md:
    act = config.get("hidden_act") or "?"
    key = "arch.mlp_swiglu" if act in ("silu", "swish") else "arch.mlp_gated"
    return r.t(key, act=act, size=r.f.value(derived.get("intermediate_size")))


def _field_table(r: Inputs, sources: dict) -> Md | None:
    t, f = r.t, r.f
    rows = []
    for row in r.doc("repair").get("fields") or []:
        status = str(row.get("status"))
        derived = t("field.not_derivable") if status == "not derivable" else f.value(row.get("derived"))
        label = Md(f"{FIELD_SYMBOLS.get(status, '⚠')} {t('field.' + status.replace(' ', '_'))}")
        source = sources.get(row.get("field"), "—")
        rows.append((code(row.get("field")), derived, f.value(row.get("declared")), label, source))
    headers = [t("col.field"), t("col.derived"), t("col.declared"), t("col.status"), t("col.how_derived")]
    return table(rows, headers) if rows else None


def _ambiguity(r: Inputs, item: dict) -> Md:
    candidates = "; ".join(
        ", ".join(f"{k} {v}" for k, v in c.items()) if isinstance(c, dict) else str(c)
        for c in item.get("candidates") or []
    )
    chosen = r.f.value(item.get("chosen"))
    return r.t(
        "arch.ambiguity", field=item.get("field"), reason=item.get("reason"), candidates=candidates, chosen=chosen
    )


def _weights(r: Inputs, intro: dict, derived: dict) -> Md:
    t, f = r.t, r.f
    ternary, checkpoint = derived.get("ternary") or {}, intro.get("checkpoint") or {}
    modules = derived.get("quantizer_modules")
    if modules:
        quantizers = t("weights.quantizers_found", n=len(modules), names=", ".join(modules[:5]))
    else:
        quantizers = t("weights.no_quantizers") if modules == [] else f.missing
    group = ternary.get("group_size")
    sample = t(
        "weights.sample",
        rows=f.value(ternary.get("rows_sampled_per_tensor")),
        tensors=f.value(ternary.get("tensors_checked")),
        values=f.value(ternary.get("values_checked")),
    )
    files = ", ".join(checkpoint.get("files") or [])
    rows = [
        (t("weights.format"), f"{checkpoint.get('format', f.missing)}: {files}", "introspect.json: checkpoint"),
        (t("weights.tensors"), f.num(derived.get("tensor_count")), "introspect.json: derived.tensor_count"),
        (t("weights.bytes"), f.bytes(derived.get("total_bytes")), "introspect.json: derived.total_bytes"),
        (t("weights.dtype"), f.value(derived.get("dtype")), "introspect.json: derived.dtype"),
        (t("weights.quantizers"), quantizers, "introspect.json: derived.quantizer_modules"),
        (t("weights.ternary"), _ternary_status(r, ternary.get("status")), "introspect.json: derived.ternary.status"),
        (
            t("weights.group_size"),
            t("weights.per_row", size=group) if ternary.get("per_row") else f.value(group),
            "introspect.json: derived.ternary.group_size, per_row",
        ),
        (t("weights.sampled"), sample, "introspect.json: derived.ternary"),
    ]
    return r.facts(rows)


def _ternary_status(r: Inputs, status) -> Md:
    key = "ternary." + str(status).replace(" ", "_")
    return r.t(key) if r.t.has(key) else text(status if status is not None else r.f.missing)


def tensor_patterns(r: Inputs) -> list[str]:
    """Tensor names with the layer index replaced by {N} (typical keys, as the reference report lists them)."""
    names = [x.get("name") for x in r.doc("fuse").get("tensors") or [] if isinstance(x, dict)]
    if not names:
        names = list(dig(r.docs, "introspect", "derived", "ternary", "tensors", default={}))
    return sorted({re.sub(r"(^|\.)layers\.\d+\.", r"\1layers.{N}.", n) for n in names if isinstance(n, str)})


# -- 2. environment -------------------------------------------------------------------------------------------


def environment(r: Inputs) -> dict:
    t, f = r.t, r.f
    env = r.doc("env")
    hw, accel = env.get("hardware") or {}, env.get("accelerators") or {}
    memory = hw.get("memory") if isinstance(hw.get("memory"), dict) else {}
    smi = accel.get("npu_smi") or {}
    parsed = smi.get("parsed") or {}
    cores = t("env.cores_value", usable=f.value(hw.get("cpu_usable")), total=f.value(hw.get("cpu_count")))
    ram = t(
        "env.memory_value", total=f.bytes(memory.get("total_bytes")), available=f.bytes(memory.get("available_bytes"))
    )
    rows = [
        (t("env.host"), f"{env.get('hostname', f.missing)} ({env.get('probed_at', '?')})", "env.json: hostname"),
        (t("env.cpu"), f"{hw.get('cpu_model', f.missing)}, {hw.get('arch', '?')}", "env.json: hardware"),
        (t("env.cores"), cores, "env.json: hardware.cpu_usable, cpu_count"),
        (t("env.memory"), ram, "env.json: hardware.memory"),
        (t("env.platform"), f"{env.get('platform', f.missing)}: {env.get('device', '')}", "env.json: platform"),
        (t("env.npu"), _npu(r, smi, parsed), "env.json: accelerators.npu_smi"),
        (t("env.npu_driver"), f.value(dig(env, "versions", "npu_driver")), "env.json: versions.npu_driver"),
        (t("env.torch_npu"), _torch_npu(r, accel.get("torch_npu") or {}), "env.json: accelerators.torch_npu"),
        (t("env.cuda"), _cuda(r, accel.get("cuda") or {}), "env.json: accelerators.cuda"),
    ]
    return {
        "missing": not env,
        "hardware": r.facts(rows, "col.item"),
        "chips": _chips(r, parsed.get("chips") or []),
        "versions": _versions(r, env),
        "container": _container(r, env),
    }


def _npu(r: Inputs, smi: dict, parsed: dict):
    t, f = r.t, r.f
    if smi.get("present") is False:
        return t("env.npu_absent", reason=smi.get("reason") or "")
    if not parsed.get("count"):
        return t("env.npu_none_listed", reason=smi.get("reason") or f"exit status {smi.get('returncode')}")
    used = parsed.get("hbm_used_mb")
    return t(
        "env.npu_value",
        model=parsed.get("model"),
        count=parsed.get("count"),
        hbm=f.mb(parsed.get("hbm_total_mb")),
        used=f.mb(used),
        version=parsed.get("version") or "?",
    )


def _last_line(error) -> str:
    lines = [line for line in str(error or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "?"


def _torch_npu(r: Inputs, npu: dict):
    t, f = r.t, r.f
    if npu.get("installed") is False:
        return t("env.not_installed")
    if npu.get("installed") is None:
        return _last_line(npu.get("reason")) if npu.get("reason") else f.missing
    if npu.get("import_ok") is False:
        return t("env.import_failed", error=_last_line(npu.get("error")))
    return t(
        "env.torch_npu_value",
        available=f.value(npu.get("is_available")),
        count=f.value(npu.get("device_count")),
        names=", ".join(npu.get("names") or []) or "—",
    )


def _cuda(r: Inputs, cuda: dict):
    t, f = r.t, r.f
    if cuda.get("error"):
        return t("env.import_failed", error=_last_line(cuda["error"]))
    devices = ", ".join(f"{d.get('name')} ({f.bytes(d.get('memory_bytes'))})" for d in cuda.get("devices") or [])
    return t(
        "env.cuda_value",
        available=f.value(cuda.get("available")),
        count=f.value(cuda.get("device_count")),
        devices=devices or "—",
    )


def _chips(r: Inputs, chips: list[dict]) -> Md | None:
    if not chips:
        return None
    t, f = r.t, r.f
    rows = [
        (
            c.get("npu_id"),
            c.get("chip_id"),
            c.get("name"),
            c.get("health"),
            f.value(c.get("power_w")),
            f.value(c.get("temperature_c")),
            f.value(c.get("aicore_pct")),
            f"{f.value(c.get('hbm_used_mb'))} / {f.value(c.get('hbm_total_mb'))}",
        )
        for c in chips
    ]
    return table(rows, ["NPU", "chip", t("col.name"), t("col.health"), "W", "°C", "AICore %", "HBM MB"])


def _versions(r: Inputs, env: dict) -> Md:
    t = r.t
    versions, dists = env.get("versions") or {}, env.get("distributions") or {}
    rows = [(code(name), version, dists.get(name, "")) for name, version in versions.items()]
    for stage in ("smoke", "baseline"):
        engine = r.doc(stage).get("engine") or {}
        if engine.get("version"):
            label = t("env.engine_at_run", stage=stage, name=engine.get("name", "?"))
            detail = f"{engine.get('distribution') or engine.get('device') or ''} (torch {engine.get('torch', '?')})"
            rows.append((label, engine["version"], detail))
    return table(rows, [t("col.component"), t("col.version"), t("col.distribution")])


def _container(r: Inputs, env: dict) -> Md:
    t, f = r.t, r.f
    box = env.get("container") or {}
    uid = box.get("uid")
    evidence = box.get("container_evidence") or []
    evidence = "; ".join(evidence) if isinstance(evidence, list) else str(evidence)
    user = t(
        "env.user_value",
        user=box.get("user", "?"),
        uid=uid if uid is not None else "?",
        gid=box.get("gid", "?"),
        root=f.yes_no(uid == 0 if isinstance(uid, int) else None),
    )
    rows = [
        (t("env.user"), user, "env.json: container.user, uid, gid"),
        (t("env.no_new_privs"), f.yes_no(box.get("no_new_privs")), "env.json: container.no_new_privs"),
        (t("env.in_container"), f"{f.yes_no(box.get('in_container'))} ({evidence})", "env.json: container"),
        (t("env.cann"), _toolkit(r, box.get("cann_toolkit") or {}), "env.json: container.cann_toolkit"),
        (t("env.vars"), _env_vars(r, env.get("env_vars") or {}), "env.json: env_vars"),
    ]
    return r.facts(rows, "col.constraint")


def _toolkit(r: Inputs, toolkit: dict):
    if not toolkit.get("home"):
        return r.t("env.no_cann")
    return r.t(
        "env.cann_value",
        home=toolkit.get("real_path") or toolkit.get("home"),
        owner=toolkit.get("owner_uid", "?"),
        matches=r.f.yes_no(toolkit.get("owner_matches")),
        writable=r.f.yes_no(toolkit.get("writable")),
    )


def _env_vars(r: Inputs, env_vars: dict) -> str:
    found = [f"{k}={v}" for k, v in env_vars.items() if isinstance(v, str)]
    ld_path = env_vars.get("LD_LIBRARY_PATH")
    if isinstance(ld_path, dict) and ld_path.get("set"):
        found.append(r.t("env.ld_path", n=ld_path.get("ascend_entries", 0)))
    return "; ".join(found) or r.t("word.none")


# -- 3. adaptation steps --------------------------------------------------------------------------------------


def adaptation(r: Inputs) -> dict:
    t, f = r.t, r.f
    manifest, repair, fuse = r.doc("manifest"), r.doc("repair"), r.doc("fuse")
    files = len(manifest.get("files") or [])
    download = [
        t("adapt.download", source=source_text(manifest), files=files, size=f.bytes(manifest.get("total_bytes")))
    ]
    resolved = {k: v for k, v in (manifest.get("source_resolved") or {}).items() if k in ("revision", "commit")}
    if resolved.get("commit"):
        download.append(t("adapt.resolved", revision=resolved.get("revision") or "-", commit=code(resolved["commit"])))
    if isinstance(manifest.get("verified_files"), int):
        download.append(t("adapt.verified", verified=manifest["verified_files"], files=files))
    fields = {row.get("field"): row for row in repair.get("fields") or []}
    repaired = [
        t(
            "adapt.repaired_field",
            field=code(name),
            declared=f.value(fields.get(name, {}).get("declared")),
            derived=f.value(fields.get(name, {}).get("derived")),
        )
        for name in repair.get("repaired") or []
    ]
    return {
        "download": download if manifest else None,
        "repaired": repaired,
        "not_derivable": ", ".join(repair.get("not_derivable") or []),
        "config_class": repair.get("transformers_config_class"),
        "tokenizer": repair.get("tokenizer"),
        "fuse_decision": fuse.get("decision"),
        "fusion": _fusion(r, fuse) if fuse else None,
        "commands": commands(r),
    }


def source_text(manifest: dict) -> Md:
    """``kind `where``` of the download source (a local path, hub repo id, ModelScope id or git URL)."""
    source = manifest.get("source") or {}
    where = next((source[k] for k in ("path", "repo_id", "model_id", "url", "repo") if source.get(k)), "?")
    return Md(f"{text(source.get('kind', '?'))} {code(where)}")


def _fusion(r: Inputs, fuse: dict) -> Md:
    t, f = r.t, r.f
    linears = t(
        "fuse.linears_value", ternary=f.value(fuse.get("linears_ternary")), checked=f.value(fuse.get("linears_checked"))
    )
    output = t("fuse.output_value", shards=len(fuse.get("shards") or []), size=f.bytes(fuse.get("total_bytes")))
    rows = [
        (t("fuse.mode"), f.value(fuse.get("mode")), "mode"),
        (t("fuse.group_size"), f.value(fuse.get("group_size")), "group_size"),
        (t("fuse.quantized"), f.value(fuse.get("tensors_quantized")), "tensors_quantized"),
        (t("fuse.linears"), linears, "linears_ternary, linears_checked"),
        (t("fuse.all_ternary"), mark(fuse.get("all_linears_ternary")), "all_linears_ternary"),
        (t("fuse.output"), output, "shards, total_bytes"),
        (t("fuse.side_files"), ", ".join(fuse.get("side_files") or []) or t("word.none"), "side_files"),
    ]
    if fuse.get("side_files_left_out"):
        rows.append((t("fuse.side_files_left_out"), ", ".join(fuse["side_files_left_out"]), "side_files_left_out"))
    return r.facts([(a, b, f"model/fuse.json: {c}") for a, b, c in rows], "col.item")


def commands(r: Inputs) -> Md:
    """Per artifact: the command that builds it when missing or stale, and the one that reruns its rule."""
    rows = []
    for artifact, rule in PRODUCERS:
        target = f"results/{r.model}/{artifact}"
        rows.append(
            (code(target), code(rule), code(r.snakemake(target)), code(r.snakemake(target, "--forcerun", rule)))
        )
    t = r.t
    return table(rows, [t("col.artifact"), t("col.rule"), t("col.command"), t("col.force")])


# -- 4. deployment --------------------------------------------------------------------------------------------


def deployment(r: Inputs) -> dict:
    smoke = r.doc("smoke")
    serve = smoke.get("serve") or {}
    command = smoke.get("vllm_serve_command") or serve.get("vllm_serve_command")
    prompts = [p for p in smoke.get("prompts") or [] if isinstance(p, dict)]
    return {
        "status": smoke.get("status"),
        "status_cell": status_cell(r.t, stage_status(smoke)),
        "reason": smoke.get("reason") if smoke else r.t("why.artifact_missing", artifact="smoke.json"),
        "log_tail": fence("\n".join(smoke["log_tail"]))
        if smoke.get("status") != "ok" and smoke.get("log_tail")
        else None,
        "serve_command": fence(re.sub(r" (?=--)", " \\\n    ", command), "bash") if command else None,
        "platform": dig(smoke, "platform", "device"),
        "settings": _settings(r, smoke.get("settings") or {}),
        "outputs": _outputs(r, prompts),
        "full_outputs": [(i, p.get("prompt"), fence(p.get("text") or "", "text")) for i, p in enumerate(prompts, 1)],
        "serve": _serve(r, serve),
    }


def _settings(r: Inputs, settings: dict) -> Md | None:
    f = r.f
    rows = []
    for section in ("engine", "generation"):
        values = settings.get(section) or {}
        rows += [(code(f"{section}.{k}"), f.value(v)) for k, v in values.items() if k != "prompts"]
    for key in ("stop_token_ids", "stop_token_ids_source", "prompt_format", "trust_remote_code"):
        if key in settings:
            rows.append((code(key), f.value(settings[key])))
    return table(rows, [r.t("col.setting"), r.t("col.value")]) if rows else None


def _outputs(r: Inputs, prompts: list[dict]) -> Md | None:
    if not prompts:
        return None
    t, f = r.t, r.f
    rows = [
        (i, p.get("prompt"), p.get("text"), f.value(p.get("num_tokens")), f.seconds(p.get("latency_s")),
         f.value(p.get("finish_reason")))
        for i, p in enumerate(prompts, 1)
    ]  # fmt: skip
    return table(rows, ["#", t("col.prompt"), t("col.output"), t("col.tokens"), t("col.time"), t("col.finish")])


def _serve(r: Inputs, serve: dict) -> dict:
    t, f = r.t, r.f
    ran = serve.get("command_ran")
    ran = shlex.join(str(a) for a in ran) if isinstance(ran, list) else ran
    rows = [
        (i, p.get("prompt"), f.value(p.get("completion_tokens")), f.seconds(p.get("latency_s")),
         mark(p.get("text_equal_offline")))
        for i, p in enumerate(serve.get("prompts") or [], 1)
    ]  # fmt: skip
    headers = ["#", t("col.prompt"), t("col.tokens"), t("col.time"), t("col.equal_offline")]
    return {
        "status_cell": status_cell(t, stage_status(serve)),
        "reason": serve.get("reason"),
        "ran": fence(ran, "bash") if ran else None,
        "url": serve.get("url") or "?",
        "startup": f.seconds(serve.get("startup_seconds")),
        "table": table(rows, headers) if rows else None,
    }
