"""ModelScope source, through the optional ``modelscope`` SDK (``pip install modelscope``).

Same shape as the hf source: a child process lists the files with their sha256 (saved in the
cache for offline reruns) and has the SDK download exactly that list into
``<results>/<model>/.download-cache/modelscope``. The endpoint is MODELSCOPE_ENDPOINT when set
(a mirror or private deployment), the token MODELSCOPE_API_TOKEN (else the SDK's stored login).
ModelScope's API gives no commit id for a branch or tag: ``source_resolved.commit`` is only set
when ``revision`` is itself a commit sha.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

from npuport.core.atomic import read_json, write_json
from npuport.core.errors import NpuportError
from npuport.download.manifest import safe_relpath
from npuport.download.sources.common import (
    Fetched,
    Policy,
    TransientError,
    run_worker,
    with_retries,
    without_credentials,
)

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://modelscope.cn"
DEFAULT_REVISION = "master"
MISSING_SDK = "source kind modelscope needs the ModelScope SDK, which is not installed: pip install modelscope"


def require_sdk(what: str) -> None:
    try:
        import modelscope  # noqa: F401
        import modelscope_hub  # noqa: F401
    except ImportError:
        raise NpuportError(what, MISSING_SDK) from None


def fetch(source: dict, cache: Path, policy: Policy) -> Fetched:
    revision = source.get("revision", DEFAULT_REVISION)
    what = f"modelscope:{source['model_id']}@{revision}"
    require_sdk(what)
    endpoint = (os.environ.get("MODELSCOPE_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    request = {"source": source, "endpoint": endpoint, "cache": str(cache)}
    value = with_retries(
        lambda: run_worker("modelscope", request, policy=policy, what=what, cache=cache), policy, what, cache
    )
    files = {f["path"]: {"size": f["size"], "sha256": f["sha256"], "git_oid": None} for f in value["files"]}
    commit = revision if re.fullmatch(r"[0-9a-f]{40}", revision) else None
    resolved = {
        "kind": "modelscope",
        "endpoint": without_credentials(endpoint),
        "model_id": source["model_id"],
        "revision": revision,
    }
    resolved |= {"commit": commit, "offline": value["offline"]}
    root = Path(value["root"])
    return Fetched(root, cache / "hub", files, resolved, discard=lambda rel: _unlink(root, rel))


def _unlink(root: Path, rel: str) -> None:
    (root / rel).unlink(missing_ok=True)


# -- child process side ---------------------------------------------------------------------------


def fetch_in_worker(request: dict) -> dict:
    try:
        from modelscope_hub.api import HubApi
    except ImportError:
        raise NpuportError(None, MISSING_SDK) from None
    source, cache = request["source"], Path(request["cache"])
    model_id, revision = source["model_id"], source.get("revision", DEFAULT_REVISION)
    api = HubApi(endpoint=request["endpoint"], token=os.environ.get("MODELSCOPE_API_TOKEN") or None)
    files, offline = _listing(api, model_id, revision, cache)
    for entry in files:
        safe_relpath(entry["path"])
    if not files:
        raise NpuportError(f"modelscope:{model_id}", "the repository lists no files")
    root = api.download_repo(
        model_id,
        "model",
        revision=revision,
        cache_dir=cache / "hub",
        file_list=[{"Path": f["path"], "Size": f["size"], "Sha256": f["sha256"]} for f in files],
        max_workers=4,
        local_files_only=offline,
    )
    return {"root": str(root), "offline": offline, "files": files}


def _listing(api, model_id: str, revision: str, cache: Path) -> tuple[list[dict], bool]:
    key = hashlib.sha256(json.dumps([model_id, revision]).encode()).hexdigest()[:16]
    saved = cache / "listings" / f"{key}.json"
    try:
        listed = api.list_repo_files(model_id, "model", revision=revision, recursive=True)
    except Exception as exc:
        if not is_transient(exc) or not saved.exists():
            raise
        log.warning("ModelScope unreachable (%s); using the saved listing", type(exc).__name__)
        return read_json(saved)["files"], True
    files = [{"path": f.path, "size": f.size, "sha256": f.sha256 or None} for f in listed if not f.is_dir]
    write_json(saved, {"model_id": model_id, "revision": revision, "files": files})
    return files, False


def is_transient(exc: Exception) -> bool:
    """Network trouble or a server hiccup; a checksum mismatch or a missing repository is not."""
    import requests
    from modelscope_hub.errors import FileDownloadError, FileIntegrityError, HubError

    if isinstance(exc, TransientError | requests.ConnectionError | requests.Timeout):
        return True
    if isinstance(exc, FileDownloadError):
        return not any(isinstance(e, FileIntegrityError) for e in exc.failed_files.values()) and exc.retryable
    return isinstance(exc, HubError) and not isinstance(exc, FileIntegrityError) and bool(exc.retryable)


def describe_error(exc: Exception) -> str | None:
    from modelscope_hub.errors import FileDownloadError, FileIntegrityError, HubError, NotExistError

    if isinstance(exc, FileDownloadError) and any(isinstance(e, FileIntegrityError) for e in exc.failed_files.values()):
        bad = [p for p, e in exc.failed_files.items() if isinstance(e, FileIntegrityError)]
        return f"refused: sha256 of {', '.join(bad)} does not match what ModelScope lists; nothing published"
    if isinstance(exc, NotExistError):
        return "repository or revision not found on ModelScope (or private: set MODELSCOPE_API_TOKEN)"
    if isinstance(exc, HubError):
        return " ".join(str(exc).split())[:400]
    return None
