"""Section 1, model architecture: facts derived from the weights, the config fields, the weight structure."""

from __future__ import annotations

import re

from npuport.report.artifacts import Doc
from npuport.report.context import ReportContext
from npuport.report.mdtext import Md, code, text
from npuport.report.sections.adaptation import qat_summary

FIELD_SYMBOLS = {"ok": "✅", "repaired": "❌", "not derivable": "⚠"}


def architecture(r: ReportContext) -> dict:
    t, f = r.t, r.f
    intro, config = r.docs.introspect, r.docs.config
    derived = intro.part("derived")
    params = derived.get("parameter_count")
    heads, kv = derived.get("num_attention_heads"), derived.get("num_key_value_heads")
    facts = [
        (t("arch.name"), r.model, "config: models[].name"),
        (t("arch.architecture"), ", ".join(config.get("architectures") or []) or f.missing, "config.json"),
        (t("arch.model_type"), f.value(config.get("model_type")), "config.json"),
        (t("arch.parameters"), _parameters(f, params), "introspect.json: derived.parameter_count"),
        (t("arch.dtype"), f.value(derived.get("dtype")), "introspect.json: derived.dtype"),
        (t("arch.declared_dtype"), f.value(intro.value("declared", "dtype")), "introspect.json: declared.dtype"),
        (t("arch.vocab"), f.value(derived.get("vocab_size")), "introspect.json: derived.vocab_size"),
        (t("arch.max_positions"), f.value(config.get("max_position_embeddings")), "config.json"),
        (t("arch.rope"), _rope(f, config), "config.json: rope_scaling / rope_parameters"),
        (t("arch.attention"), _attention(r, heads, kv, derived.get("head_dim")), "introspect.json: derived"),
        (t("arch.mlp"), _mlp(r, config, derived), "config.json: hidden_act; introspect.json: derived"),
        (t("arch.tied"), f.value(derived.get("tie_word_embeddings")), "introspect.json: derived"),
    ]
    return {
        "facts": r.facts(facts),
        "fields": _field_table(r, intro.part("sources")),
        "ambiguities": [_ambiguity(r, a) for a in intro.records("ambiguities")],
        "weights": _weights(r, intro, derived),
        "patterns": [code(p) for p in tensor_patterns(r)],
        "notes": [text(n) for n in intro.array("notes")],
    }


def _parameters(f, count) -> str:
    if not isinstance(count, int):
        return f.missing
    return f"{f.num(count)} (≈{count / 1e9:.2f} B)" if count >= 1e9 else f"{f.num(count)} (≈{count / 1e6:.2f} M)"


def _rope(f, config: Doc) -> str:
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


def _attention(r: ReportContext, heads, kv, head_dim):
    if not isinstance(heads, int) or not isinstance(kv, int) or not kv:
        return r.t("arch.attention_unknown")
    if heads == kv:
        return r.t("arch.mha", heads=heads, head_dim=head_dim)
    return r.t("arch.gqa", heads=heads, kv=kv, ratio=heads // kv, head_dim=head_dim)


def _mlp(r: ReportContext, config: Doc, derived: Doc) -> Md:
    act = config.get("hidden_act") or "?"
    key = "arch.mlp_swiglu" if act in ("silu", "swish") else "arch.mlp_gated"
    return r.t(key, act=act, size=r.f.value(derived.get("intermediate_size")))


def _field_table(r: ReportContext, sources: Doc) -> Md | None:
    """repair.json's fields: derived from the weights beside declared, and whether they agree."""
    t, f = r.t, r.f

    def derived(row: Doc):
        status = row.get("status")
        return t("field.not_derivable") if status == "not derivable" else f.value(row.get("derived"))

    def status(row: Doc) -> Md:
        status = str(row.get("status"))
        return Md(f"{FIELD_SYMBOLS.get(status, '⚠')} {t('field.' + status.replace(' ', '_'))}")

    columns = [
        ("col.field", lambda row: code(row.get("field"))),
        ("col.derived", derived),
        ("col.declared", lambda row: f.value(row.get("declared"))),
        ("col.status", status),
        ("col.how_derived", lambda row: sources.get(row.get("field"), "—")),
    ]
    rows = r.docs.repair.records("fields")
    return r.table(rows, columns) if rows else None


def _ambiguity(r: ReportContext, item: Doc) -> Md:
    candidates = "; ".join(
        ", ".join(f"{k} {v}" for k, v in c.items()) if isinstance(c, dict) else str(c)
        for c in item.get("candidates") or []
    )
    chosen = r.f.value(item.get("chosen"))
    return r.t(
        "arch.ambiguity", field=item.get("field"), reason=item.get("reason"), candidates=candidates, chosen=chosen
    )


def _weights(r: ReportContext, intro: Doc, derived: Doc) -> Md:
    t, f = r.t, r.f
    ternary, checkpoint = derived.part("ternary"), intro.part("checkpoint")
    modules = derived.get("quantizer_modules")
    if modules:
        quantizers = t("weights.quantizers_found", n=len(modules), names=", ".join(modules[:5]))
    else:
        quantizers = t("weights.no_quantizers") if modules == [] else f.missing
    qat = derived.part("qat")
    status = _ternary_status(r, ternary.get("status"), qat)
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
        (t("weights.qat"), qat_summary(r, qat), "introspect.json: derived.qat"),
        (t("weights.ternary"), status, "introspect.json: derived.ternary.status, qat.found"),
        (t("weights.group_size"), *_group_size(r, ternary, qat)),
        (t("weights.sampled"), sample, "introspect.json: derived.ternary"),
    ]
    return r.facts(rows)


def _ternary_status(r: ReportContext, status, qat: Doc) -> Md:
    if status == "latent" and qat and not qat.get("found"):  # no linear ternary and nothing says QAT: plain weights
        status = "plain"
    key = "ternary." + str(status).replace(" ", "_")
    return r.t(key) if r.t.has(key) else text(status if status is not None else r.f.missing)


def _group_size(r: ReportContext, ternary: Doc, qat: Doc) -> tuple[Md | str, str]:
    """(value, source) of the ternary group size: the weights' own where they are ternary, else the one the QAT
    evidence names (what fuse uses: latent weights carry none), else not applicable."""
    group = ternary.get("group_size")
    if group is not None:
        shown = r.t("weights.per_row", size=group) if ternary.get("per_row") else r.f.value(group)
        return shown, "introspect.json: derived.ternary.group_size, per_row"
    if qat.get("group_size") is not None:
        where = "; ".join(str(w) for w in qat.get("group_size_from") or []) or "-"
        shown = r.t("weights.group_size_evidence", size=r.f.value(qat["group_size"]), where=where)
        return shown, "introspect.json: derived.qat.group_size, group_size_from"
    if ternary.get("status") in ("latent", "not applicable"):
        return r.t("weights.group_size_none"), "introspect.json: derived.ternary.status, derived.qat.group_size"
    return r.f.value(group), "introspect.json: derived.ternary.group_size, per_row"


def tensor_patterns(r: ReportContext) -> list[str]:
    """Tensor names with the layer index replaced by {N} (typical keys, as the reference report lists them)."""
    names = [x.get("name") for x in r.docs.fuse.records("tensors")]
    if not names:
        names = list(r.docs.introspect.value("derived", "ternary", "tensors", default={}))
    return sorted({re.sub(r"(^|\.)layers\.\d+\.", r"\1layers.{N}.", n) for n in names if isinstance(n, str)})
