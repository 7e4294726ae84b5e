"""Hugging Face hub source (or any mirror named by HF_ENDPOINT), through huggingface_hub.

The parent resolves nothing itself: a child process (see worker.py) resolves the revision to a
commit, lists the files with their LFS sha256 / git blob ids, and runs ``snapshot_download`` into
the cache (``<results>/<model>/.download-cache/hf``). That listing is saved there, so a rerun with
no network completes from a complete cache. Completed files persist across runs; a file cut off
mid-transfer is resumed (HTTP Range) within the run by huggingface_hub. The token comes from
HF_TOKEN (else huggingface_hub's stored login); it is never written to disk by us.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from npuport.core.atomic import read_json, write_json
from npuport.core.errors import NpuportError
from npuport.download.manifest import safe_relpath
from npuport.download.sources.common import (
    Fetched,
    Policy,
    TransientError,
    remove_stale,
    run_worker,
    with_retries,
    without_credentials,
)

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"


def endpoint_from_env() -> str:
    """HF_ENDPOINT (a mirror) read now, not at huggingface_hub's import time."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def fetch(source: dict, cache: Path, policy: Policy) -> Fetched:
    """Bring ``source`` (kind hf) into ``cache``; retried on transient errors within the policy's deadline."""
    endpoint = endpoint_from_env()
    what = f"hf:{source['repo_id']}@{source.get('revision', 'main')}"
    request = {"source": source, "endpoint": endpoint, "cache": str(cache)}
    # huggingface_hub 2.x names partial files uniquely per process: a killed run's leftovers are garbage.
    remove_stale(cache / "hub", "*.incomplete")
    # hf_xet's chunk cache (used for Xet-stored files on the real hub) also stays beside the target;
    # byte progress bars are on although the log is no terminal, refreshed every few seconds.
    env = {"HF_XET_CACHE": str(cache / "xet"), "TQDM_POSITION": "-1", "TQDM_MININTERVAL": "5"}
    env = {key: os.environ.get(key) or value for key, value in env.items()}
    value = with_retries(
        lambda: run_worker("hf", request, policy=policy, what=what, cache=cache, env=env), policy, what, cache
    )
    files = {f["path"]: {k: f[k] for k in ("size", "sha256", "git_oid")} for f in value["files"]}
    resolved = {
        "kind": "hf",
        "endpoint": without_credentials(endpoint),
        "repo_id": source["repo_id"],
        "revision": source.get("revision", "main"),
        "commit": value["commit"],
        "offline": value["offline"],
    }
    root = Path(value["root"])
    return Fetched(root=root, trusted_root=cache / "hub", files=files, resolved=resolved, discard=_discarder(root))


def _discarder(root: Path):
    def discard(rel: str) -> None:
        link = root / rel
        if link.is_symlink():
            link.resolve().unlink(missing_ok=True)
        link.unlink(missing_ok=True)

    return discard


# -- child process side ---------------------------------------------------------------------------


def fetch_in_worker(request: dict) -> dict:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import filter_repo_objects

    source, endpoint, cache = request["source"], request["endpoint"], Path(request["cache"])
    repo_id, revision = source["repo_id"], source.get("revision", "main")
    token = os.environ.get("HF_TOKEN") or None
    plan, offline = _plan(repo_id, revision, endpoint=endpoint, token=token, cache=cache)
    names = list(
        filter_repo_objects(
            [e["path"] for e in plan["tree"]],
            allow_patterns=source.get("allow_patterns"),
            ignore_patterns=source.get("ignore_patterns"),
        )
    )
    for name in names:
        safe_relpath(name)
    if not names:
        raise NpuportError(f"hf:{repo_id}", "no file of the repository matches allow_patterns/ignore_patterns")
    root = snapshot_download(
        repo_id,
        revision=plan["commit"],
        cache_dir=cache / "hub",
        allow_patterns=source.get("allow_patterns"),
        ignore_patterns=source.get("ignore_patterns"),
        endpoint=endpoint,
        token=token,
        max_workers=4,
    )
    wanted = set(names)
    files = [_expected(e) for e in plan["tree"] if e["path"] in wanted]
    return {"root": root, "commit": plan["commit"], "offline": offline, "files": files}


def _plan(repo_id: str, revision: str, *, endpoint: str, token: str | None, cache: Path) -> tuple[dict, bool]:
    """The commit and file listing of ``revision``: from the hub, else (network down) the one saved last time."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    key = hashlib.sha256(json.dumps([repo_id, revision]).encode()).hexdigest()[:16]
    saved = cache / "listings" / f"{key}.json"
    try:
        api = HfApi(endpoint=endpoint, token=token)
        commit = api.repo_info(repo_id, revision=revision).sha
        tree = [
            {"path": f.path, "size": f.size, "oid": f.blob_id, "lfs_sha256": f.lfs.sha256 if f.lfs else None}
            for f in api.list_repo_tree(repo_id, recursive=True, revision=commit)
            if isinstance(f, RepoFile)
        ]
    except Exception as exc:
        if not (is_transient(exc) or _is_offline(exc)) or not saved.exists():
            raise
        plan = read_json(saved)
        log.warning(
            "%s unreachable (%s); using the listing of %s@%s saved when it resolved to %s",
            endpoint, type(exc).__name__, repo_id, revision, plan["commit"],
        )  # fmt: skip
        return plan, True
    plan = {"repo_id": repo_id, "revision": revision, "commit": commit, "tree": tree}
    write_json(saved, plan)
    return plan, False


def _expected(entry: dict) -> dict:
    """What the hub advertises for one file: LFS files by sha256, the others by git blob id."""
    if entry["lfs_sha256"]:
        return {"path": entry["path"], "size": entry["size"], "sha256": entry["lfs_sha256"], "git_oid": None}
    return {"path": entry["path"], "size": entry["size"], "sha256": None, "git_oid": entry["oid"]}


def _is_offline(exc: Exception) -> bool:
    from huggingface_hub.errors import OfflineModeIsEnabled

    return isinstance(exc, OfflineModeIsEnabled)


def is_transient(exc: Exception) -> bool:
    """Network trouble or a hub hiccup (retry); not: missing repo/revision/file, bad token, offline mode."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if isinstance(exc, httpx2.TransportError | TransientError):
        return True
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        return status in (408, 429) or status >= 500
    if isinstance(exc, LocalEntryNotFoundError):
        return not constants.is_offline_mode()
    return isinstance(exc, OSError) and "Consistency check failed" in str(exc)


def describe_error(exc: Exception) -> str | None:
    """One line for the errors a user can act on; None for the rest (traceback goes to the log)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return "gated repository: accept its terms on the hub and set HF_TOKEN to a token with access"
    if isinstance(exc, RepositoryNotFoundError):
        return "repository not found, or private and HF_TOKEN is missing or lacks access"
    if isinstance(exc, RevisionNotFoundError):
        return "revision not found in the repository"
    if isinstance(exc, RemoteEntryNotFoundError):
        return f"a listed file is missing on the hub: {exc}".splitlines()[0]
    if isinstance(exc, LocalEntryNotFoundError):
        return "hub unreachable and the files are not all in the cache yet (" + str(exc).splitlines()[0] + ")"
    if is_transient(exc):
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None
