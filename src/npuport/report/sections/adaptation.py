"""Section 3, adaptation steps: download, config repair, weight fusion, and the commands behind each artifact."""

from __future__ import annotations

from npuport.report.artifacts import Doc
from npuport.report.context import ReportContext
from npuport.report.formatting import mark, status_cell
from npuport.report.mdtext import Md, code, text
from npuport.report.verdicts import NOT_MEASURED, join


def adaptation(r: ReportContext) -> dict:
    manifest, repair, fuse = r.docs.manifest, r.docs.repair, r.docs.fuse
    return {
        "download": _download(r, manifest) if manifest else None,
        "repaired": _repaired(r, repair),
        "removed": [
            r.t("adapt.removed_key", name=code(x.get("key")), value=r.f.value(x.get("value")), reason=x.get("reason"))
            for x in repair.records("removed")
        ],
        "not_derivable": ", ".join(repair.get("not_derivable") or []),
        "config_class": repair.get("transformers_config_class"),
        "tokenizer": repair.get("tokenizer"),
        "fuse_decision": fuse.get("decision"),
        "fusion": _fusion(r, fuse) if fuse else None,
        "commands": commands(r),
    }


def source_text(manifest: Doc) -> Md:
    """``kind `where``` of the download source (a local path, hub repo id, ModelScope id or git URL)."""
    source = manifest.part("source")
    where = next((source[k] for k in ("path", "repo_id", "model_id", "url", "repo") if source.get(k)), "?")
    return Md(f"{text(source.get('kind', '?'))} {code(where)}")


def _download(r: ReportContext, manifest: Doc) -> list[Md]:
    t = r.t
    files = len(manifest.get("files") or [])
    lines = [
        t("adapt.download", source=source_text(manifest), files=files, size=r.f.bytes(manifest.get("total_bytes")))
    ]
    resolved = manifest.part("source_resolved")
    if resolved.get("commit"):
        lines.append(t("adapt.resolved", revision=resolved.get("revision") or "-", commit=code(resolved["commit"])))
    if isinstance(manifest.get("verified_files"), int):
        lines.append(t("adapt.verified", verified=manifest["verified_files"], files=files))
    return lines


def _repaired(r: ReportContext, repair: Doc) -> list[Md]:
    """Each field repair.json rewrote: declared -> derived."""
    fields = {row.get("field"): row for row in repair.records("fields")}
    return [
        r.t(
            "adapt.repaired_field",
            field=code(name),
            declared=r.f.value(fields.get(name, Doc()).get("declared")),
            derived=r.f.value(fields.get(name, Doc()).get("derived")),
        )
        for name in repair.get("repaired") or []
    ]


def _fusion(r: ReportContext, fuse: Doc) -> Md:
    t, f = r.t, r.f
    linears = t(
        "fuse.linears_value", ternary=f.value(fuse.get("linears_ternary")), checked=f.value(fuse.get("linears_checked"))
    )
    output = t("fuse.output_value", shards=len(fuse.get("shards") or []), size=f.bytes(fuse.get("total_bytes")))
    # not fused (no ternary QAT evidence, mode never): not being ternary is what was expected, never a ❌, and no
    # group size was used
    all_ternary, group_size = mark(fuse.get("all_linears_ternary")), _group_size(r, fuse)
    if fuse.get("ternary_expected") is False:
        all_ternary = t("fuse.not_expected")
        linears = t("fuse.linears_not_fused", ternary=f.value(fuse.get("linears_ternary")),
                    checked=f.value(fuse.get("linears_checked")))  # fmt: skip
        if not fuse.get("tensors_quantized"):
            group_size = t("fuse.group_size_unused")
    rows = [
        (t("fuse.mode"), f.value(fuse.get("mode")), "mode"),
        (t("fuse.fused"), f.value(fuse.get("fused")), "fused"),
        (t("fuse.qat_evidence"), qat_summary(r, fuse.part("qat_evidence")), "qat_evidence.summary, evidence"),
        (t("fuse.group_size"), group_size, "group_size, group_size_source, group_size_detail"),
        (t("fuse.quantized"), f.value(fuse.get("tensors_quantized")), "tensors_quantized"),
        (t("fuse.linears"), linears, "linears_ternary, linears_checked"),
        (t("fuse.all_ternary"), all_ternary, "all_linears_ternary, ternary_expected"),
        (t("fuse.output"), output, "shards, total_bytes"),
        (t("fuse.side_files"), ", ".join(fuse.get("side_files") or []) or t("word.none"), "side_files"),
    ]
    if fuse.get("ternary_expected") is False:
        reason = fuse.get("ternary_expected_reason") or f.missing
        rows.append((t("fuse.ternary_expected"), reason, "ternary_expected, ternary_expected_reason"))
    check = fuse.part("qat_forward_check")
    if check:
        status = check.get("status") if check.get("status") in ("passed", "failed") else NOT_MEASURED
        shown = join(status_cell(t, status), check.get("reason"), sep=" — ")
        rows.append((t("fuse.qat_forward"), shown, "qat_forward_check"))
    if fuse.get("side_files_left_out"):
        rows.append((t("fuse.side_files_left_out"), ", ".join(fuse["side_files_left_out"]), "side_files_left_out"))
    return r.facts([(a, b, f"model/fuse.json: {c}") for a, b, c in rows], "col.item")


def qat_summary(r: ReportContext, qat: Doc) -> Md:
    """The QAT evidence's summary and each piece's detail (introspect.json: derived.qat, model/fuse.json:
    qat_evidence); "not measured" where the artifact holds none."""
    if not qat:
        return text(r.f.missing)
    summary = str(qat.get("summary") or "-")
    # the summary already quotes the deciding piece's detail: each other piece once, none twice
    details = list(dict.fromkeys(str(e.get("detail")) for e in qat.records("evidence") if e.get("detail")))
    found = r.t("word.found") if qat.get("found") else r.t("word.none_found")
    return join(Md(f"{found}: {text(summary)}"), *(d for d in details if d not in summary))


def _group_size(r: ReportContext, fuse: Doc) -> Md:
    source = fuse.get("group_size_source")
    if source is None:
        return text(r.f.value(fuse.get("group_size")))
    return r.t(
        "fuse.group_size_value",
        size=r.f.value(fuse.get("group_size")),
        source=source,
        detail=fuse.get("group_size_detail") or "-",
    )


def commands(r: ReportContext) -> Md:
    """Per stage target the rule declares: the command that builds it when missing or stale, and the one that
    reruns its rule."""
    columns = [
        ("col.artifact", lambda target: code(target[0])),
        ("col.rule", lambda target: code(target[1])),
        ("col.command", lambda target: code(r.snakemake(target[0]))),
        ("col.force", lambda target: code(r.snakemake(target[0], "--forcerun", target[1]))),
    ]
    return r.table(r.stage_targets, columns)
