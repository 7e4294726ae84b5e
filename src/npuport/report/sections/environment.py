"""Section 2, environment: the host's hardware, software versions and container constraints (env.json)."""

from __future__ import annotations

from operator import itemgetter

from npuport.report.artifacts import Doc
from npuport.report.context import ReportContext
from npuport.report.mdtext import Md, code
from npuport.report.tables import Verbatim


def environment(r: ReportContext) -> dict:
    t, f = r.t, r.f
    env = r.docs.env
    hw, accel = env.part("hardware"), env.part("accelerators")
    memory = hw.part("memory")
    smi = accel.part("npu_smi")
    parsed = smi.part("parsed")
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
        (t("env.npu_driver"), f.value(env.value("versions", "npu_driver")), "env.json: versions.npu_driver"),
        (t("env.torch_npu"), _torch_npu(r, accel.part("torch_npu")), "env.json: accelerators.torch_npu"),
        (t("env.cuda"), _cuda(r, accel.part("cuda")), "env.json: accelerators.cuda"),
    ]
    return {
        "missing": not env,
        "hardware": r.facts(rows, "col.item"),
        "chips": _chips(r, parsed.records("chips")),
        "versions": _versions(r, env),
        "container": _container(r, env),
    }


def _npu(r: ReportContext, smi: Doc, parsed: Doc):
    t, f = r.t, r.f
    if smi.get("present") is False:
        return t("env.npu_absent", reason=smi.get("reason") or "")
    if not parsed.get("count"):
        return t("env.npu_none_listed", reason=smi.get("reason") or f"exit status {smi.get('returncode')}")
    return t(
        "env.npu_value",
        model=parsed.get("model"),
        count=parsed.get("count"),
        hbm=f.mb(parsed.get("hbm_total_mb")),
        used=f.mb(parsed.get("hbm_used_mb")),
        version=parsed.get("version") or "?",
    )


def _last_line(error) -> str:
    lines = [line for line in str(error or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "?"


def _torch_npu(r: ReportContext, npu: Doc):
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


def _cuda(r: ReportContext, cuda: Doc):
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


def _chips(r: ReportContext, chips: list[Doc]) -> Md | None:
    """One row per NPU chip npu-smi listed."""
    if not chips:
        return None
    f = r.f
    columns = [
        (Verbatim("NPU"), lambda c: c.get("npu_id")),
        (Verbatim("chip"), lambda c: c.get("chip_id")),
        ("col.name", lambda c: c.get("name")),
        ("col.health", lambda c: c.get("health")),
        (Verbatim("W"), lambda c: f.value(c.get("power_w"))),
        (Verbatim("°C"), lambda c: f.value(c.get("temperature_c"))),
        (Verbatim("AICore %"), lambda c: f.value(c.get("aicore_pct"))),
        (Verbatim("HBM MB"), lambda c: f"{f.value(c.get('hbm_used_mb'))} / {f.value(c.get('hbm_total_mb'))}"),
    ]
    return r.table(chips, columns)


def _versions(r: ReportContext, env: Doc) -> Md:
    """Versions the probe found, then the engines as the smoke and baseline stages loaded them."""
    t = r.t
    dists = env.part("distributions")
    rows = [(code(name), version, dists.get(name, "")) for name, version in env.part("versions").items()]
    for stage in ("smoke", "baseline"):
        engine = getattr(r.docs, stage).part("engine")
        if engine.get("version"):
            label = t("env.engine_at_run", stage=stage, name=engine.get("name", "?"))
            detail = f"{engine.get('distribution') or engine.get('device') or ''} (torch {engine.get('torch', '?')})"
            rows.append((label, engine["version"], detail))
    columns = [("col.component", itemgetter(0)), ("col.version", itemgetter(1)), ("col.distribution", itemgetter(2))]
    return r.table(rows, columns)


def _container(r: ReportContext, env: Doc) -> Md:
    t, f = r.t, r.f
    box = env.part("container")
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
        (t("env.cann"), _toolkit(r, box.part("cann_toolkit")), "env.json: container.cann_toolkit"),
        (t("env.vars"), _env_vars(r, env.part("env_vars")), "env.json: env_vars"),
    ]
    return r.facts(rows, "col.constraint")


def _toolkit(r: ReportContext, toolkit: Doc):
    if not toolkit.get("home"):
        return r.t("env.no_cann")
    return r.t(
        "env.cann_value",
        home=toolkit.get("real_path") or toolkit.get("home"),
        owner=toolkit.get("owner_uid", "?"),
        matches=r.f.yes_no(toolkit.get("owner_matches")),
        writable=r.f.yes_no(toolkit.get("writable")),
    )


def _env_vars(r: ReportContext, env_vars: Doc) -> str:
    found = [f"{k}={v}" for k, v in env_vars.items() if isinstance(v, str)]
    ld_path = env_vars.get("LD_LIBRARY_PATH")
    if isinstance(ld_path, dict) and ld_path.get("set"):
        found.append(r.t("env.ld_path", n=ld_path.get("ascend_entries", 0)))
    return "; ".join(found) or r.t("word.none")
