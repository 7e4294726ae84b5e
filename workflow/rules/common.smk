import os
import re
from pathlib import Path

from npuport.core.codehash import code_hash
from npuport.core.settings import model_entry, model_names, model_section

MODELS = model_names(config)
ACCELERATOR = config["accelerator"]["resource"]
# Conda env of the stages that run an engine; the light stages use the CPU env everywhere.
ENGINE_ENV = {"none": "cpu", "npu": "ascend", "gpu": "cuda"}[ACCELERATOR]


# Every artifact path, written once: rules declare these as outputs, and every consumer reaches them
# through rules.<stage>.output.
RESULTS = "results/{model}"
ARTIFACTS = {
    "download": f"{RESULTS}/download",
    "introspect": f"{RESULTS}/introspect.json",
    "config": f"{RESULTS}/config.json",
    "repair": f"{RESULTS}/repair.json",
    "model": f"{RESULTS}/model",
    "env": f"{RESULTS}/env.json",
    "smoke": f"{RESULTS}/smoke.json",
    "capture": f"{RESULTS}/capture",
    "baseline": f"{RESULTS}/baseline.json",
    "compare": f"{RESULTS}/compare.json",
    "layers": f"{RESULTS}/layers.json",
    "dumps": f"{RESULTS}/dumps",
    "bench": f"{RESULTS}/bench.json",
    "bench_results": f"{RESULTS}/bench",
    "accuracy_engine": f"{RESULTS}/accuracy/engine",
    "accuracy": f"{RESULTS}/accuracy.json",
    "accuracy_reference": f"{RESULTS}/accuracy/reference",
    "report": f"{RESULTS}/report.md",
    "plots": f"{RESULTS}/plots",
    "summary": f"{RESULTS}/report.json",
    "index": "results/report.md",
}


def log_file(rule):
    return f"logs/{{model}}/{rule}.log"


def benchmark_file(rule):
    return f"{RESULTS}/benchmarks/{rule}.tsv"


def script_code(script):
    """Params value: hash of the npuport code ``workflow/scripts/<script>.py`` reaches (its import closure)."""
    return code_hash(Path(workflow.basedir) / "workflow" / "scripts" / f"{script}.py")


wildcard_constraints:
    model="|".join(re.escape(m) for m in MODELS),


def model_setting(section):
    """Params function: the section's defaults merged with the model's overrides."""
    return lambda wildcards: model_section(config, wildcards.model, section)


def model_field(field, default=None):
    """Params function: one top-level field of the model's entry."""
    return lambda wildcards: model_entry(config, wildcards.model).get(field, default)


def reference_threads(wildcards):
    """Threads of the transformers stages (baseline, compare): baseline.threads, else every core this process
    may use. Snakemake caps them at --cores and exports them as OMP_NUM_THREADS, which torch follows.
    """
    threads = model_section(config, wildcards.model, "baseline").get("threads")
    return threads or len(os.sched_getaffinity(0))


def all_cores(wildcards):
    """Threads of env_probe: every core of the run, so no other job shares the host while it measures the memory
    bandwidth (a copy beside another job measures the two of them). Cluster profiles set their own.
    """
    return workflow.cores


def local_source_files(wildcards):
    """Input function: the files of a local source, so editing them reruns download."""
    source = model_entry(config, wildcards.model)["source"]
    if source["kind"] != "local":
        return []
    root = Path(workflow.basedir) / source["path"]
    # relative to the workflow where possible: a moved checkout is not a changed input
    return sorted(
        (
            os.path.relpath(p, workflow.basedir)
            if p.is_relative_to(workflow.basedir)
            else str(p)
        )
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.parts
    )


def accuracy_include_path():
    """Params value: the folder of lm-eval task YAMLs (accuracy.include_path), relative to the workflow directory
    where the scripts run (a moved checkout is not a changed param), or None."""
    return config["accuracy"]["include_path"]


def accuracy_task_files(wildcards):
    """Input function: the files of accuracy.include_path, so editing a shipped task reruns both sides."""
    path = config["accuracy"]["include_path"]
    if path is None:
        return []
    root = Path(workflow.basedir) / path
    return sorted(
        os.path.relpath(p, workflow.basedir)
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )


def accelerator(kind):
    """Resource amount of the engine stages: 1 of the configured accelerator kind, else 0."""
    return 1 if ACCELERATOR == kind else 0


def relative_paths(paths):
    """``paths`` relative to the workflow's directory (the run's config files as the report's commands name them)."""
    base = Path(workflow.basedir).resolve()
    return [Path(os.path.relpath(Path(p).resolve(), base)).as_posix() for p in paths]


def installed_versions(*packages):
    """Installed versions of ``packages`` ("absent" when missing): a reinstall changes this param."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "absent"
    return found


# The stages whose artifacts and costs one model's report shows, in pipeline order.
REPORTED_STAGES = [
    "download",
    "introspect",
    "repair_config",
    "fuse",
    "env_probe",
    "smoke",
    "baseline",
    "compare",
    "layers",
    "bench",
    "accuracy_reference",
    "accuracy",
]


def stage_targets(wildcards):
    """Params function: (artifact, rule) per stage output, as the report's rerun commands name them."""
    return [
        (path.format(model=wildcards.model), stage)
        for stage in REPORTED_STAGES
        for path in getattr(rules, stage).output
    ]
