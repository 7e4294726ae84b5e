"""Installed versions read without importing anything: Python packages, the CANN toolkit, the NPU driver."""

from __future__ import annotations

import glob
import importlib.metadata
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from npuport.env.probe_tools import read_key_values, unknown

DRIVER_VERSION_FILE = Path("/usr/local/Ascend/driver/version.info")


def package_versions(packages: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Installed version and providing distribution of each import name, without importing it."""
    top_level = importlib.metadata.packages_distributions()
    versions, distributions = {}, {}
    for name in packages:
        candidates = [*top_level.get(name, []), name.replace("_", "-"), name]
        versions[name] = "absent"
        for dist in dict.fromkeys(candidates):
            try:
                versions[name] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
            distributions[name] = dist
            break
    return versions, distributions


def cann_home_candidates(env: Mapping[str, str]) -> list[str]:
    """Where a CANN toolkit may live, most specific first (env vars, then the default install paths)."""
    candidates = [env.get("ASCEND_TOOLKIT_HOME"), env.get("ASCEND_HOME_PATH")]
    candidates += ["/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann"]
    candidates += sorted(glob.glob("/usr/local/Ascend/cann-*"), reverse=True)
    if env.get("HOME"):
        candidates.append(os.path.join(env["HOME"], "Ascend/ascend-toolkit/latest"))
    return [path for path in dict.fromkeys(candidates) if path]


def cann_version_file(home: Path) -> Path | None:
    """The install-info file torch_npu itself reads (`ascend_*_install.info`), toolkit first."""
    patterns = ["*-linux/ascend_toolkit_install.info", "ascend_toolkit_install.info"]
    patterns += ["*-linux/ascend_*_install.info", "ascend_*_install.info"]
    for pattern in patterns:
        found = sorted(home.glob(pattern))
        if found:
            return found[0]
    return None


def probe_cann(env: Mapping[str, str]) -> dict:
    """CANN toolkit: where it is, its version, and whether this user owns or can write it."""
    home = next((Path(p) for p in cann_home_candidates(env) if os.path.isdir(p)), None)
    if home is None:
        return {"home": None, "version": "absent", "reason": "no CANN toolkit directory found"}
    real = home.resolve()
    stat = real.stat()
    facts = {
        "home": str(home),
        "real_path": str(real),
        "owner_uid": stat.st_uid,
        "owner_matches": stat.st_uid == os.getuid(),
        "writable": os.access(real, os.W_OK),
    }
    version_file = cann_version_file(real)
    if version_file is None:
        return {**facts, "version": unknown(f"no ascend_*_install.info under {real}"), "version_file": None}
    fields = read_key_values(version_file)
    version = fields.get("version") or unknown(f"no version= line in {version_file}")
    return {**facts, "version": version, "version_file": str(version_file), "package": fields.get("package_name")}


def driver_version(path: Path = DRIVER_VERSION_FILE) -> str:
    """NPU driver version; newer drivers put the release in package_version and a component version in Version."""
    if not path.exists():
        return "absent"
    fields = read_key_values(path)
    return fields.get("package_version") or fields.get("Version") or unknown(f"no Version= line in {path}")
