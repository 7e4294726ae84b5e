"""Section 3, adaptation steps: download, config repair, weight fusion, and the commands behind each artifact."""

from __future__ import annotations

from npuport.report.artifacts import Doc
from npuport.report.context import ReportContext
from npuport.report.formatting import mark
from npuport.report.mdtext import Md, code, text


def adaptation(r: ReportContext) -> dict:
    manifest, repair, fuse = r.docs.manifest, r.docs.repair, r.docs.fuse
    return {
        "download": _download(r, manifest) if manifest else None,
        "repaired": _repaired(r, repair),
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
