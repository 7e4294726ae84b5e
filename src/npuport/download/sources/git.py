"""git + LFS source (GitCode and other git hosts): clone, check out the pinned revision, ``git lfs pull``.

The clone lives in the cache (``<results>/<model>/.download-cache/git/<hash of url>``); a rerun
fetches into it (completed LFS objects stay in .git/lfs and are not fetched again) and, when the
host is unreachable but the revision is already there, completes offline. Every file is checked:
LFS files against the sha256 of their pointer, the others against their git blob id.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path

from npuport.core.errors import NpuportError
from npuport.download.manifest import safe_relpath
from npuport.download.sources.common import (
    Fetched,
    Policy,
    TransientError,
    run_bounded,
    with_retries,
    without_credentials,
)

log = logging.getLogger(__name__)

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
_POINTER_MAX_BYTES = 1024
# Explicit LFS filter settings so that the user's git config cannot change what a checkout writes.
_LFS_FILTER = [
    "-c", "filter.lfs.process=git-lfs filter-process",
    "-c", "filter.lfs.smudge=git-lfs smudge -- %f",
    "-c", "filter.lfs.clean=git-lfs clean -- %f",
    "-c", "filter.lfs.required=true",
]  # fmt: skip


class _Git:
    """git commands in one repository, bounded by the policy's deadline, output in the log."""

    def __init__(self, repo: Path, policy: Policy, what: str, cache: Path):
        self.repo, self.policy, self.what, self.cache = repo, policy, what, cache
        # Checkouts write LFS pointers; `git lfs pull` replaces them with content afterwards.
        self.env = os.environ | {"GIT_LFS_SKIP_SMUDGE": "1", "GIT_TERMINAL_PROMPT": "0"}

    def run(self, *args: str, cwd: Path | None = None) -> tuple[int, str]:
        cmd = ["git", *_LFS_FILTER, *args]
        return run_bounded(cmd, self.policy, self.what, self.cache, cwd=cwd or self.repo, env=self.env)

    def must(self, *args: str, transient: bool = False) -> str:
        code, out = self.run(*args)
        if code != 0:
            message = f"`git {' '.join(args)}` failed ({code}): {_last_lines(out)}"
            raise TransientError(message) if transient else NpuportError(self.what, message)
        return out

    def output(self, *args: str, stdin: bytes | None = None) -> bytes:
        """Quiet command whose stdout we parse (not streamed to the log)."""
        import subprocess

        try:
            done = subprocess.run(
                ["git", *args], cwd=self.repo, env=self.env, input=stdin, capture_output=True,
                timeout=max(self.policy.remaining(), 0.1),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise self.policy.timed_out(self.what, self.cache) from None
        if done.returncode != 0:
            raise NpuportError(self.what, f"`git {' '.join(args)}` failed: {_last_lines(done.stderr.decode())}")
        return done.stdout


def require_git_lfs(what: str) -> None:
    """NpuportError unless git and git-lfs both run."""
    import subprocess

    try:
        done = subprocess.run(["git", "lfs", "version"], capture_output=True, timeout=60)
    except FileNotFoundError:
        raise NpuportError(
            what, "git is not installed (not found on PATH); source kind git needs git and git-lfs"
        ) from None
    if done.returncode != 0:
        raise NpuportError(
            what,
            "git-lfs is not installed (`git lfs version` failed); source kind git needs it to fetch the weights "
            "stored in LFS: install it (Debian/Ubuntu: apt-get install git-lfs; else https://git-lfs.com)",
        )


def fetch(source: dict, cache: Path, policy: Policy) -> Fetched:
    url, revision = source["url"], source["revision"]
    what = f"git:{without_credentials(url)}@{revision}"
    if revision.startswith("-"):
        raise NpuportError(what, "revision must be a commit, tag or branch name")
    require_git_lfs(what)
    repo = cache / hashlib.sha256(url.encode()).hexdigest()[:16]
    git = _Git(repo, policy, what, cache)
    offline = _update(git, url, revision)
    commit = _resolve(git, revision)
    if commit is None and not offline and re.fullmatch(r"[0-9a-f]{40}", revision):
        git.run("fetch", "origin", revision)  # a commit on no branch: hosts that allow it serve it by id
        commit = _resolve(git, revision)
    if commit is None:
        raise NpuportError(what, f"revision {revision!r} is neither a branch, a tag nor a commit of the repository")
    git.must("checkout", "--force", "--detach", commit)
    git.must("clean", "-ffdq")
    entries = _tree(git, commit)
    if any(e["sha256"] for e in entries.values()):
        try:
            _lfs_pull(git, policy, offline)
        except NpuportError as exc:
            _refuse_pointers(repo, entries, what, cause=exc.problem)
            raise
    _refuse_pointers(repo, entries, what)
    resolved = {"kind": "git", "url": without_credentials(url), "revision": revision, "commit": commit}
    return Fetched(
        root=repo, trusted_root=repo, files=entries, resolved=resolved | {"offline": offline}, discard=_discarder(repo)
    )


def _update(git: _Git, url: str, revision: str) -> bool:
    """Clone, or fetch into the existing clone; True when the host was unreachable and the clone is used as is."""
    if git.repo.is_dir() and _is_clone_of(git, url):
        code, out = git.run("fetch", "--prune", "--tags", "--force", "origin", "+refs/heads/*:refs/remotes/origin/*")
        if code == 0:
            return False
        if _resolve(git, revision) is not None:
            log.warning("fetch failed, using the clone already in the cache: %s", _last_lines(out))
            return True
        return with_retries(lambda: _fetch(git), git.policy, git.what, git.cache)
    shutil.rmtree(git.repo, ignore_errors=True)
    with_retries(lambda: _clone(git, url), git.policy, git.what, git.cache)
    return False


def _fetch(git: _Git) -> bool:
    git.must("fetch", "--prune", "--tags", "--force", "origin", "+refs/heads/*:refs/remotes/origin/*", transient=True)
    return False


def _clone(git: _Git, url: str) -> None:
    """Clone into a temporary folder renamed into place, so a killed clone is never mistaken for one."""
    partial = git.repo.with_name(git.repo.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    code, out = git.run("clone", "--no-checkout", "--progress", "--", url, str(partial), cwd=partial.parent)
    if code != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise TransientError(f"git clone failed ({code}): {_last_lines(out)}")
    partial.rename(git.repo)


def _is_clone_of(git: _Git, url: str) -> bool:
    code, out = git.run("config", "--get", "remote.origin.url")
    return code == 0 and out.strip() == url


def _resolve(git: _Git, revision: str) -> str | None:
    """Commit sha of a remote branch, a tag or a commit (in that order)."""
    for ref in (f"refs/remotes/origin/{revision}", f"refs/tags/{revision}", revision):
        code, out = git.run("rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
        if code == 0:
            return out.strip().splitlines()[-1]
    return None


def _tree(git: _Git, commit: str) -> dict[str, dict]:
    """Every file of ``commit`` with what it must contain: LFS pointer sha256/size, else the git blob id."""
    raw = git.output("ls-tree", "-r", "-z", "-l", "--full-tree", commit)
    entries, small = {}, []
    for record in filter(None, raw.split(b"\0")):
        meta, path = record.split(b"\t", 1)
        mode, kind, oid, size = meta.split()
        name = path.decode("utf-8", "surrogateescape")
        if kind != b"blob":  # a submodule: not part of a checkpoint
            log.info("skipping submodule %s", name)
            continue
        safe_relpath(name)
        entries[name] = {"size": int(size), "sha256": None, "git_oid": oid.decode(), "mode": mode.decode()}
        if int(size) <= _POINTER_MAX_BYTES and mode != b"120000":
            small.append(name)
    if small:
        batch = git.output("cat-file", "--batch", stdin=b"".join(entries[n]["git_oid"].encode() + b"\n" for n in small))
        for name, blob in zip(small, _split_batch(batch), strict=True):
            pointer = parse_lfs_pointer(blob)
            if pointer:
                entries[name] |= {"sha256": pointer[0], "size": pointer[1], "git_oid": None}
    for entry in entries.values():
        if entry.pop("mode") == "120000":
            entry["size"] = entry["git_oid"] = None  # a symlink: checked as the file it points to
    return entries


def _split_batch(data: bytes) -> list[bytes]:
    """Contents out of `git cat-file --batch` output ("<oid> <type> <size>\\n<content>\\n" each)."""
    blobs, at = [], 0
    while at < len(data):
        header_end = data.index(b"\n", at)
        size = int(data[at:header_end].split()[2])
        blobs.append(data[header_end + 1 : header_end + 1 + size])
        at = header_end + 1 + size + 1
    return blobs


def parse_lfs_pointer(blob: bytes) -> tuple[str, int] | None:
    """(sha256, size) of a git-lfs pointer file's text, or None when ``blob`` is not one."""
    if not blob.startswith(LFS_POINTER_PREFIX) or len(blob) > _POINTER_MAX_BYTES:
        return None
    fields = dict(line.split(" ", 1) for line in blob.decode("utf-8", "replace").splitlines() if " " in line)
    oid, size = fields.get("oid", ""), fields.get("size", "")
    if not oid.startswith("sha256:") or not size.isdigit():
        return None
    return oid.removeprefix("sha256:"), int(size)


def _lfs_pull(git: _Git, policy: Policy, offline: bool) -> None:
    """Fetch the LFS objects of the checkout (objects already in .git/lfs are not fetched again)."""

    def attempt() -> None:
        code, out = git.run("lfs", "pull")
        if code != 0:
            raise TransientError(f"git lfs pull failed ({code}): {_last_lines(out)}")

    if offline:  # host unreachable: place what the local LFS store has; the pointer check reports the rest
        git.run("lfs", "checkout")
        return
    with_retries(attempt, policy, git.what, git.cache)


def _refuse_pointers(repo: Path, entries: dict[str, dict], what: str, cause: str | None = None) -> None:
    """NpuportError naming the files that still hold LFS pointer text instead of their content."""
    left = []
    for name in entries:
        path = repo / name
        if path.is_file() and not path.is_symlink() and path.stat().st_size <= _POINTER_MAX_BYTES:
            if path.read_bytes().startswith(LFS_POINTER_PREFIX):
                left.append(name)
    if left:
        shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
        why = f"git-lfs: {cause}" if cause else "the LFS server lacks these objects or needs credentials"
        raise NpuportError(
            what, f"LFS pointer files were not replaced by their content: {shown} ({why}); nothing published"
        )


def _discarder(repo: Path):
    def discard(rel: str) -> None:
        (repo / rel).unlink(missing_ok=True)

    return discard


def _last_lines(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "no output"
