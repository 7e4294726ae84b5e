"""The env_probe stage entry: probe_environment composes the probes, the platform choice and the diagnostics."""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Mapping, Sequence

from npuport.env.accelerators import probe_accelerators
from npuport.env.diagnostics import diagnose
from npuport.env.host import probe_container, probe_env_vars, probe_hardware
from npuport.env.membw import measure_memory_bandwidth
from npuport.env.platform_choice import decide_platform
from npuport.env.probe_tools import safe, unknown
from npuport.env.versions import driver_version, package_versions, probe_cann

# diagnose is re-exported for tests/test_report.py, which imports it from here.
__all__ = ["DEFAULT_PACKAGES", "diagnose", "probe_environment"]

DEFAULT_PACKAGES = ("torch", "transformers", "vllm", "vllm_ascend", "torch_npu")


def _versions(env: Mapping[str, str], packages: list[str]) -> tuple[dict, dict, dict]:
    """(versions, distributions, CANN facts): Python, each package, CANN and the NPU driver."""
    versions: dict = {"python": platform.python_version()}
    pkg = safe("package versions", package_versions, packages)
    distributions = {}
    if isinstance(pkg, tuple):
        versions.update(pkg[0])
        distributions = pkg[1]
    else:
        versions.update({name: pkg for name in packages})
    cann = safe("CANN toolkit", probe_cann, env)
    cann = cann if isinstance(cann, dict) else {"version": cann}
    versions["CANN"] = cann.get("version", unknown("CANN probe failed"))
    versions["npu_driver"] = safe("NPU driver version", driver_version)
    return versions, distributions, cann


def probe_environment(env: Mapping[str, str] | None = None, packages: Sequence[str] = DEFAULT_PACKAGES) -> dict:
    """The env.json document for this host; `env` is the environment of the engine run (default os.environ).

    Never raises: a fact that cannot be told is recorded as ``"unknown: <reason>"``.
    """
    start = time.monotonic()
    env = dict(os.environ if env is None else env)
    # Names may be import names (vllm_ascend) or distribution names (vllm-ascend); the defaults are always probed.
    packages = list(dict.fromkeys([*DEFAULT_PACKAGES, *(name.lower().replace("-", "_") for name in packages)]))
    versions, distributions, cann = _versions(env, packages)
    facts = {
        "probed_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "versions": versions,
        "distributions": distributions,
        "cann": cann,
        "hardware": safe("hardware", probe_hardware),
        "accelerators": safe("accelerators", probe_accelerators, env),
        "container": safe("container", probe_container, env, cann),
        "env_vars": safe("environment variables", probe_env_vars, env),
    }
    for key in ("hardware", "accelerators", "container", "env_vars"):
        if not isinstance(facts[key], dict):
            facts[key] = {"error": facts[key]}
    # host memory bandwidth (a short copy benchmark, with its method): the bench stage's bound on a CPU host
    facts["hardware"]["memory_bandwidth"] = safe("memory bandwidth", measure_memory_bandwidth)
    facts["platform"], facts["device"] = decide_platform(facts)
    facts["diagnostics"] = diagnose(facts)
    facts["probe_seconds"] = round(time.monotonic() - start, 3)
    return facts
