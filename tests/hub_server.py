"""A loopback fake of the model hub routes the download stage uses, serving files a test creates.

Hugging Face routes (what huggingface_hub 2.x calls for a snapshot):
  GET  /api/models/{repo}/revision/{rev}            repo info with the resolved commit sha
  GET  /api/models/{repo}/tree/{rev}?recursive=...  file listing with git oid, size and LFS sha256
  HEAD /{repo}/resolve/{rev}/{path}                 X-Repo-Commit, ETag, X-Linked-Etag/-Size; LFS files are
                                                    redirected to a "CDN" on another host name (localhost)
  GET  /{repo}/resolve/{rev}/{path}, /cdn/{sha256}  the bytes, with Range support
ModelScope routes (what the modelscope SDK calls for a snapshot):
  GET  /api/v1/models/{repo}                        repo info
  GET  /api/v1/models/{repo}/revisions              branches and tags
  GET  /api/v1/models/{repo}/repo/files?Revision=   file listing with Sha256
  GET  /api/v1/models/{repo}/repo?FilePath=         the bytes, with Range support

Faults a test can inject per file: drop the connection after N bytes on the first GET, answer 500 a
number of times, stall before answering; and advertise a wrong sha256. Every request is logged.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt")


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    sha = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()


@dataclass
class FakeRepo:
    """One model repository at one commit; ``revisions`` are the names that resolve to it."""

    repo_id: str
    files: dict[str, bytes]
    revisions: tuple[str, ...] = ("main", "master")
    token: str | None = None  # when set, every route needs "Authorization: Bearer <token>"
    wrong_sha256: set[str] = field(default_factory=set)  # paths whose advertised sha256 is wrong
    extra_listing: list[str] = field(default_factory=list)  # names listed but never served (e.g. "../x")

    @property
    def commit(self) -> str:
        digest = hashlib.sha1(self.repo_id.encode())
        for path in sorted(self.files):
            digest.update(path.encode() + b"\0" + self.files[path])
        return digest.hexdigest()

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def sha256(self, path: str) -> str:
        real = hashlib.sha256(self.files.get(path, b"")).hexdigest()
        return ("0" if real[0] != "0" else "1") + real[1:] if path in self.wrong_sha256 else real

    def hf_entry(self, path: str) -> dict:
        data = self.files.get(path, b"")
        if not self.is_lfs(path):
            return {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": path}
        pointer = lfs_pointer(data)
        lfs = {"oid": self.sha256(path), "size": len(data), "pointerSize": len(pointer)}
        return {"type": "file", "oid": git_blob_oid(pointer), "size": len(data), "path": path, "lfs": lfs}

    def hf_tree(self) -> list[dict]:
        names = sorted(self.files) + list(self.extra_listing)
        folders = sorted({"/".join(n.split("/")[:i]) for n in names for i in range(1, n.count("/") + 1)})
        return [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in folders] + [
            self.hf_entry(n) for n in names
        ]


@dataclass
class Faults:
    drop_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the first GET is cut
    fail_status: dict[str, list[int]] = field(default_factory=dict)  # path or route name -> statuses to answer first
    # path -> seconds to wait before each GET answer (cut short when the server stops); HubServer.stalls_ended
    # lists the paths whose wait ran out
    stall_s: dict[str, float] = field(default_factory=dict)


class HubServer:
    """Threaded HTTP server on 127.0.0.1 (a free port); use as a context manager."""

    def __init__(self, *repos: FakeRepo, faults: Faults | None = None):
        self.repos = {r.repo_id: r for r in repos}
        self.faults = faults or Faults()
        self.requests: list[dict] = []
        self.stalls_ended: list[str] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def log(self, **entry) -> None:
        with self._lock:
            self.requests.append(entry)

    def gets(self, path: str) -> list[dict]:
        """Logged GETs of file ``path`` (hub resolve, CDN or ModelScope route)."""
        return [r for r in self.requests if r["method"] == "GET" and r.get("file") == path]

    def take_fault(self, table: dict, key: str):
        """Pop the next queued fault for ``key`` (each fault fires once)."""
        with self._lock:
            queue = table.get(key)
            if isinstance(queue, list):
                return queue.pop(0) if queue else None
            return table.pop(key, None)


_HF_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>[^/]+)$")
_HF_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/.*)?$")
_HF_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_CDN = re.compile(r"^/cdn/(?P<repo>[^/]+/[^/]+)/(?P<path>.+)$")
_MS_INFO = re.compile(r"^/api/v1/models/(?P<repo>[^/]+/[^/]+)$")
_MS_REVISIONS = re.compile(r"^/api/v1/models/(?P<repo>[^/]+/[^/]+)/revisions$")
_MS_FILES = re.compile(r"^/api/v1/models/(?P<repo>[^/]+/[^/]+)/repo/files$")
_MS_FILE = re.compile(r"^/api/v1/models/(?P<repo>[^/]+/[^/]+)/repo$")


class _Handler(BaseHTTPRequestHandler):
    """One request to the fake hub; ``hub`` is the HubServer it serves (set per server by _handler_for)."""

    protocol_version = "HTTP/1.1"
    hub: HubServer

    def log_message(self, *args):  # keep pytest output clean; requests are in self.hub.requests
        pass

    def do_HEAD(self):
        self._route(head=True)

    def do_GET(self):
        self._route(head=False)

    # -- plumbing ---------------------------------------------------------------------------
    def _route(self, head: bool) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        entry = {"method": self.command, "path": path, "query": url.query, "range": self.headers.get("Range")}
        entry["authorization"] = self.headers.get("Authorization")
        self._head = head
        for route, pattern, handler in self._routes():
            match = pattern.match(path)
            if match:
                repo = self.hub.repos.get(match["repo"])
                entry |= {
                    "route": route,
                    "file": match.groupdict().get("path") or (query.get("FilePath") or [None])[0],
                }
                self.hub.log(**entry)
                if repo is None:
                    return self._error(404, "RepoNotFound")
                if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}" and route != "cdn":
                    return self._error(401, "RepoNotFound")
                status = self.hub.take_fault(self.hub.faults.fail_status, entry["file"] or route)
                if status:
                    return self._error(status, None)
                return handler(repo, match, query, head)
        self.hub.log(**entry)
        self._error(404, None)

    def _routes(self):
        return [
            ("hf_info", _HF_INFO, self._hf_info),
            ("hf_tree", _HF_TREE, self._hf_tree),
            ("hf_resolve", _HF_RESOLVE, self._hf_resolve),
            ("cdn", _CDN, self._cdn),
            ("ms_info", _MS_INFO, self._ms_info),
            ("ms_revisions", _MS_REVISIONS, self._ms_revisions),
            ("ms_files", _MS_FILES, self._ms_files),
            ("ms_file", _MS_FILE, self._ms_file),
        ]

    def _error(self, status: int, code: str | None) -> None:
        body = json.dumps({"error": code or "error"}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not self._head:
            self.wfile.write(body)

    def _json(self, document, head: bool = False, headers: dict | None = None) -> None:
        body = json.dumps(document).encode()
        self.send_response(200)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _bytes(self, name: str, data: bytes, head: bool, headers: dict) -> None:
        """Serve ``data`` honouring "Range: bytes=N-"; apply the file's faults on GET."""
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not head:
            start = int(match[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        if not head and (stall := self.hub.faults.stall_s.get(name)):
            if self.hub._stopping.wait(stall):
                return
            self.hub.stalls_ended.append(name)
        body = data[start:]
        self.send_response(206 if start else 200)
        for key, value in headers.items():
            self.send_header(key, value)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        cut = None if start else self.hub.take_fault(self.hub.faults.drop_after, name)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _resolved(self, repo: FakeRepo, rev: str) -> bool:
        return rev in repo.revisions or rev == repo.commit

    # -- Hugging Face -----------------------------------------------------------------------
    def _hf_info(self, repo, match, query, head):
        if not self._resolved(repo, match["rev"]):
            return self._error(404, "RevisionNotFound")
        siblings = [{"rfilename": p} for p in sorted(repo.files)]
        self._json({"id": repo.repo_id, "sha": repo.commit, "siblings": siblings, "private": bool(repo.token)})

    def _hf_tree(self, repo, match, query, head):
        if not self._resolved(repo, match["rev"]):
            return self._error(404, "RevisionNotFound")
        self._json(repo.hf_tree())

    def _hf_resolve(self, repo, match, query, head):
        name = match["path"]
        if not self._resolved(repo, match["rev"]):
            return self._error(404, "RevisionNotFound")
        if name not in repo.files:
            return self._error(404, "EntryNotFound")
        data = repo.files[name]
        headers = {"X-Repo-Commit": repo.commit}
        if not repo.is_lfs(name):
            headers["ETag"] = f'"{git_blob_oid(data)}"'
            return self._bytes(name, data, head, headers)
        # LFS: the hub answers with a redirect to a CDN host, the metadata on the redirect itself.
        headers |= {"ETag": f'"{git_blob_oid(lfs_pointer(data))}"', "X-Linked-Size": str(len(data))}
        headers["X-Linked-Etag"] = f'"{repo.sha256(name)}"'
        self.send_response(302)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Location", f"http://localhost:{self.hub.port}/cdn/{repo.repo_id}/{quote(name)}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _cdn(self, repo, match, query, head):
        name = match["path"]
        if name not in repo.files:
            return self._error(404, None)
        self._bytes(name, repo.files[name], head, {"ETag": f'"{repo.sha256(name)}"'})

    # -- ModelScope -------------------------------------------------------------------------
    def _ms_envelope(self, data, head=False):
        self._json({"Code": 200, "Success": True, "Message": "success", "Data": data}, head)

    def _ms_info(self, repo, match, query, head):
        owner, name = repo.repo_id.split("/")
        self._ms_envelope({"Id": 1, "Name": name, "Path": owner, "ModelId": repo.repo_id, "Revision": "master"})

    def _ms_revisions(self, repo, match, query, head):
        branches = [{"Revision": r, "CommitId": repo.commit} for r in repo.revisions]
        self._ms_envelope({"RevisionMap": {"Branches": branches, "Tags": []}})

    def _ms_files(self, repo, match, query, head):
        rev = (query.get("Revision") or ["master"])[0]
        if not self._resolved(repo, rev):
            return self._error(404, None)
        files = [
            {
                "Name": p.rsplit("/", 1)[-1],
                "Path": p,
                "Type": "blob",
                "Size": len(repo.files.get(p, b"")),
                "Sha256": repo.sha256(p) if p in repo.files else "",
                "Revision": repo.commit,
                "IsLFS": repo.is_lfs(p),
            }
            for p in sorted(repo.files) + list(repo.extra_listing)
        ]
        self._ms_envelope({"Files": files})

    def _ms_file(self, repo, match, query, head):
        name = (query.get("FilePath") or [""])[0]
        rev = (query.get("Revision") or ["master"])[0]
        if name not in repo.files or not self._resolved(repo, rev):
            return self._error(404, None)
        self._bytes(name, repo.files[name], head, {"ETag": f'"{repo.sha256(name)}"'})


def _handler_for(hub: HubServer) -> type[_Handler]:
    """The handler class of one HubServer: the routes of _Handler, answering from that server's repos and faults."""
    return type("Handler", (_Handler,), {"hub": hub})
