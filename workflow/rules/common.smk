import os
import re
from pathlib import Path

from npuport.codehash import module_hash
from npuport.settings import model_entry, model_names, model_section

MODELS = model_names(config)
ACCELERATOR = config["accelerator"]["resource"]
# Conda env of the stages that run an engine; the light stages use the CPU env everywhere.
ENGINE_ENV = {"none": "cpu", "npu": "ascend", "gpu": "cuda"}[ACCELERATOR]


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


def local_source_files(wildcards):
    """Input function: the files of a local source, so editing them reruns download."""
    source = model_entry(config, wildcards.model)["source"]
    if source["kind"] != "local":
        return []
    root = Path(workflow.basedir) / source["path"]
    return sorted(
        str(p) for p in root.rglob("*") if p.is_file() and ".git" not in p.parts
    )


def accelerator(kind):
    """Resource amount of the engine stages: 1 of the configured accelerator kind, else 0."""
    return 1 if ACCELERATOR == kind else 0


def per_model(pattern):
    return expand(pattern, model=MODELS)


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
