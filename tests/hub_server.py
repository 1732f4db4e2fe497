"""A small Hugging Face hub on 127.0.0.1 for the tests: the endpoints Cattery's hub code uses.

The real `huggingface_hub` client talks to it through `HF_ENDPOINT`. It serves repos built
from real files (the bundled GGUF, a split copy of it, a safetensors checkpoint), with the
hub's own headers: `X-Repo-Commit`, `ETag`/`X-Linked-Etag` (the SHA-256 of LFS files),
`X-Linked-Size`, ranges (206), `X-Error-Code` for missing and gated repos. Faults can be
switched on per file: drop the connection after N bytes, corrupt the bytes, refuse.

It can also LIE, for the hostile-input tests (issue 13), each lie behind an option that is
off by default: a file's entry in the listing with keys replaced (`HubFile.listed`: a bad
SHA-256, a negative or string size), bytes served other than the file's (`HubFile.served`:
longer or shorter than declared), a body that never ends (`HubFile.endless`), a repo's info
with keys replaced or a raw body of any bytes, even an endless stream (`HubRepo.listed`,
`HubRepo.raw_info`), hostile `X-Repo-Commit` and ETag headers, and a raw search answer
(`HubServer.raw_search`). Hostile file names need no option: add a file by that name.

Endpoints: GET /api/models (search), GET /api/models/{repo}[/revision/{rev}] (info, with
`blobs`), GET /api/models/{repo}/tree/{rev}[/{path}], POST /api/models/{repo}/paths-info/{rev},
HEAD/GET /{repo}/resolve/{rev}/{path}.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".model")


# A raw answer: bytes, or a function giving the chunks of a body of no declared length
# (sent until it ends, or for ever; the connection is closed after it).
RawBody = bytes | Callable[[], Iterable[bytes]]


@dataclass
class HubFile:
    path: str
    data: bytes
    listed: dict[str, Any] = field(default_factory=dict)  # lie: keys replaced in the file's listing entry
    served: bytes | None = None  # lie: these bytes are sent instead of the file's
    endless: bool = False  # lie: after the bytes, more bytes, for ever

    @property
    def size(self) -> int:
        return len(self.data)

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @cached_property
    def git_oid(self) -> str:
        return hashlib.sha1(b"blob %d\0" % self.size + self.data).hexdigest()

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    def entry(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "path": self.path, "size": self.size, "oid": self.git_oid}
        if self.lfs:
            out["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": 134}
        return out


@dataclass
class HubRepo:
    id: str
    files: dict[str, HubFile] = field(default_factory=dict)
    downloads: int = 0
    likes: int = 0
    last_modified: str = "2026-11-01T12:00:00.000Z"
    tags: list[str] = field(default_factory=list)
    gated: bool = False
    listed: dict[str, Any] = field(default_factory=dict)  # lie: keys replaced in the repo's info
    raw_info: RawBody | None = None  # lie: the info answer is these bytes
    commit_header: str | None = None  # lie: X-Repo-Commit of its files
    etag_header: str | None = None  # lie: ETag and X-Linked-Etag of its files

    @property
    def sha(self) -> str:
        h = hashlib.sha1(self.id.encode())
        for f in sorted(self.files.values(), key=lambda f: f.path):
            h.update(f.path.encode() + f.sha256.encode())
        return h.hexdigest()

    def add(self, path: str, data: bytes | Path) -> HubFile:
        f = HubFile(path, data.read_bytes() if isinstance(data, Path) else data)
        self.files[path] = f
        if path.endswith(".gguf") and "gguf" not in self.tags:
            self.tags.append("gguf")
        return f

    def summary(self) -> dict[str, Any]:
        return {
            "_id": hashlib.md5(self.id.encode()).hexdigest()[:24],
            "id": self.id,
            "modelId": self.id,
            "downloads": self.downloads,
            "likes": self.likes,
            "lastModified": self.last_modified,
            "createdAt": "2026-01-01T00:00:00.000Z",
            "tags": self.tags,
            "private": False,
            "gated": "manual" if self.gated else False,
            "library_name": "gguf" if "gguf" in self.tags else "transformers",
        }

    def info(self, blobs: bool) -> dict[str, Any]:
        siblings = []
        for f in sorted(self.files.values(), key=lambda f: f.path):
            s: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                s.update(size=f.size, blobId=f.git_oid)
                if f.lfs:
                    s["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
            s.update(f.listed)
            siblings.append(s)
        return {**self.summary(), "sha": self.sha, "siblings": siblings, "disabled": False, **self.listed}


@dataclass
class Fault:
    """What goes wrong when a file is fetched: the next `times` GETs are affected."""

    drop_after: int | None = None  # close the connection after this many bytes of the body
    corrupt: bool = False  # flip bytes in the middle of the body
    rate: int | None = None  # bytes per second, to have a download in flight for a while
    times: int = 1


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up part way (as Cattery does on a body that runs on) is no error here."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class HubServer:
    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.token = "hf_test_token"
        self.faults: dict[tuple[str, str], Fault] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.raw_search: RawBody | None = None  # lie: the search answer is these bytes
        self.raw_headers: dict[str, str] = {}  # lie: headers of every raw answer (Content-Encoding…)
        self.lock = threading.Lock()
        self.httpd = _QuietServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> HubServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def repo(self, repo_id: str, **kw: Any) -> HubRepo:
        r = HubRepo(repo_id, **kw)
        self.repos[repo_id] = r
        return r

    def fault(self, repo_id: str, path: str, **kw: Any) -> None:
        self.faults[(repo_id, path)] = Fault(**kw)

    def count(self, method: str, needle: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == method and needle in p)

    def _take_fault(self, repo_id: str, path: str) -> Fault | None:
        with self.lock:
            f = self.faults.get((repo_id, path))
            if f is None:
                return None
            f.times -= 1
            if f.times <= 0:
                del self.faults[(repo_id, path)]
            return f

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once, not 40 ms apart

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            # -- helpers -------------------------------------------------------------

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if "Content-Length" not in (headers or {}):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD" and body:
                    self.wfile.write(body)

            def _raw(self, body: RawBody) -> None:
                """A lie's answer: fixed bytes, or chunks until they end (or the client goes)."""
                if isinstance(body, bytes):
                    return self._send(200, body, {"Content-Type": "application/json", **server.raw_headers})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                for k, v in server.raw_headers.items():
                    self.send_header(k, v)
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    for chunk in body():
                        self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _json(self, data: Any, status: int = 200) -> None:
                self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

            def _error(self, status: int, code: str, message: str) -> None:
                body = json.dumps({"error": message}).encode()
                self._send(
                    status, body, {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message}
                )

            def _repo(self, repo_id: str) -> HubRepo | None:
                repo = server.repos.get(repo_id)
                if repo is None:
                    self._error(401, "RepoNotFound", "Repository not found")
                    return None
                if repo.gated:
                    auth = self.headers.get("Authorization", "")
                    if not auth:
                        self._error(401, "GatedRepo", "Access to this model is restricted. You must be authenticated.")
                        return None
                    if auth != f"Bearer {server.token}":
                        self._error(403, "GatedRepo", "Access to this model is restricted: your token has no access.")
                        return None
                return repo

            def _revision(self, repo: HubRepo, rev: str) -> bool:
                if unquote(rev) not in ("main", repo.sha):
                    self._error(404, "RevisionNotFound", "Invalid rev id")
                    return False
                return True

            # -- methods -------------------------------------------------------------

            def do_HEAD(self) -> None:
                self._dispatch()

            def do_GET(self) -> None:
                self._dispatch()

            def do_POST(self) -> None:
                self._dispatch()

            def _dispatch(self) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                path = parts.path
                server.requests.append((self.command, path, dict(self.headers)))
                if self.command == "POST":
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length).decode()
                    form = parse_qs(body)
                    m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/paths-info/([^/]+)", path)
                    if m:
                        return self._paths_info(m.group(1), m.group(2), form.get("paths", []))
                    return self._error(404, "EntryNotFound", "no such endpoint")
                if path == "/api/models":
                    return self._search(query)
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
                if m:
                    return self._info(m.group(1), m.group(2) or "main", "blobs" in query)
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
                if m:
                    return self._tree(m.group(1), m.group(2), unquote((m.group(3) or "/")[1:]))
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if m:
                    return self._resolve(m.group(1), m.group(2), unquote(m.group(3)))
                self._error(404, "EntryNotFound", "no such endpoint")

            def _search(self, query: dict[str, list[str]]) -> None:
                if server.raw_search is not None:
                    return self._raw(server.raw_search)
                words = (query.get("search") or [""])[0].lower()
                filters = query.get("filter", [])
                found = [
                    r for r in server.repos.values() if words in r.id.lower() and all(f in r.tags for f in filters)
                ]
                sort = (query.get("sort") or ["downloads"])[0]
                if sort == "downloads":
                    found.sort(key=lambda r: r.downloads, reverse=True)
                elif sort == "lastModified":
                    found.sort(key=lambda r: r.last_modified, reverse=True)
                limit = int((query.get("limit") or ["1000"])[0])
                self._json([r.summary() for r in found[:limit]])

            def _info(self, repo_id: str, rev: str, blobs: bool) -> None:
                repo = self._repo(repo_id)
                if repo is not None and repo.raw_info is not None:
                    return self._raw(repo.raw_info)
                if repo is not None and self._revision(repo, rev):
                    self._json(repo.info(blobs))

            def _tree(self, repo_id: str, rev: str, prefix: str) -> None:
                repo = self._repo(repo_id)
                if repo is None or not self._revision(repo, rev):
                    return
                prefix = prefix.strip("/")
                entries = [
                    f.entry()
                    for f in sorted(repo.files.values(), key=lambda f: f.path)
                    if not prefix or f.path.startswith(prefix + "/")
                ]
                self._json(entries)

            def _paths_info(self, repo_id: str, rev: str, paths: list[str]) -> None:
                repo = self._repo(repo_id)
                if repo is None or not self._revision(repo, rev):
                    return
                self._json([repo.files[p].entry() for p in paths if p in repo.files])

            def _resolve(self, repo_id: str, rev: str, file_path: str) -> None:
                repo = self._repo(repo_id)
                if repo is None or not self._revision(repo, rev):
                    return
                f = repo.files.get(file_path)
                if f is None:
                    return self._error(404, "EntryNotFound", f"{file_path} does not exist")
                etag = repo.etag_header or (f.sha256 if f.lfs else f.git_oid)
                headers = {
                    "X-Repo-Commit": repo.commit_header or repo.sha,
                    "ETag": f'"{etag}"',
                    "Accept-Ranges": "bytes",
                    "Content-Type": "application/octet-stream",
                }
                if f.lfs:
                    headers["X-Linked-Etag"] = f'"{repo.etag_header or f.sha256}"'
                    headers["X-Linked-Size"] = str(f.size)
                data = f.data if f.served is None else f.served
                start, end = 0, len(data) - 1
                status = 200
                rng = self.headers.get("Range")
                if rng:
                    m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                    if m:
                        start = int(m.group(1))
                        end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
                        if start >= len(data) and not f.endless:
                            return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                        status = 206
                        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                body = data[start : end + 1]
                if self.command == "HEAD":
                    headers["Content-Length"] = str(f.size)
                    return self._send(200, b"", headers)
                if f.endless:
                    return self._endless(status, headers, body)
                fault = server._take_fault(repo_id, file_path)
                if fault is not None and fault.corrupt:
                    mid = len(body) // 2
                    body = body[:mid] + bytes(b ^ 0xFF for b in body[mid : mid + 64]) + body[mid + 64 :]
                headers["Content-Length"] = str(len(body))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if fault is not None and fault.drop_after is not None:
                    self.wfile.write(body[: fault.drop_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if fault is not None and fault.rate:
                    step = max(1, fault.rate // 20)
                    try:
                        for i in range(0, len(body), step):
                            self.wfile.write(body[i : i + step])
                            time.sleep(0.05)
                    except (BrokenPipeError, ConnectionResetError):
                        self.close_connection = True
                    return
                self.wfile.write(body)

            def _endless(self, status: int, headers: dict[str, str], body: bytes) -> None:
                """The bytes asked for, then more, for ever: no length, until the client goes."""
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    self.wfile.write(body)
                    while True:
                        self.wfile.write(b"\x00" * 65536)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler


# -- the repos of the tests ------------------------------------------------------------------

SMOL = "cattery-test/SmolLM2-135M-Instruct-GGUF"
SPLIT = "cattery-test/SmolLM2-split-GGUF"
CHECKPOINT = "cattery-test/tiny-llama"
GATED = "cattery-test/gated-GGUF"
QUANTS = "other/Nothing-GGUF"
PICKLED = "other/pickled-only"
ADAPTER = "cattery-test/tiny-lora"
TOKENIZER = "cattery-test/tokenizer-only"  # the bundled model's tokenizer.json and config, no weights
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def tiny_gguf(path: Path) -> bytes:
    import numpy as np

    from tests.gguf_files import write_gguf

    write_gguf(
        path,
        tensors={"token_embd.weight": np.ones((256, 64), dtype=np.float32)},
        extra={"llama.attention.head_count_kv": 2, "llama.feed_forward_length": 128},
    )
    return path.read_bytes()


def build_test_hub(model_path: Path, work: Path) -> HubServer:
    """The repos the tests use, made from the bundled model and files written here (not started)."""
    import numpy as np

    from tests.gguf_files import split_copy

    server = HubServer()
    smol = server.repo(SMOL, downloads=5000, last_modified="2026-10-01T09:00:00.000Z")
    smol.add(FILE, model_path)
    smol.add("README.md", b"# SmolLM2 GGUF\n")
    split = server.repo(SPLIT, downloads=300)
    for part in split_copy(model_path, work / "split", 40_000_000):
        split.add(part.name, part)
    import safetensors.numpy

    ckpt = server.repo(CHECKPOINT, downloads=10)
    weights = {"model.embed_tokens.weight": np.zeros((32, 16), dtype=np.float32)}
    safetensors.numpy.save_file(weights, str(work / "model.safetensors"))
    ckpt.add("model.safetensors", work / "model.safetensors")
    ckpt.add("config.json", json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 16}).encode())
    ckpt.add("tokenizer.json", b'{"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}')
    ckpt.add("tokenizer_config.json", b'{"eos_token": "</s>"}')
    ckpt.add("pytorch_model.bin", b"\x80\x04not for unpickling")
    adapter = server.repo(ADAPTER, downloads=5)
    safetensors.numpy.save_file(
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((4, 16), dtype=np.float32)},
        str(work / "adapter_model.safetensors"),
    )
    adapter.add("adapter_model.safetensors", work / "adapter_model.safetensors")
    adapter.add("adapter_config.json", json.dumps({"r": 4, "lora_alpha": 8, "peft_type": "LORA"}).encode())
    adapter.add("README.md", b"# a LoRA\n")
    gated = server.repo(GATED, gated=True, downloads=50)
    gated.add("tiny.Q8_0.gguf", tiny_gguf(work / "gated.gguf"))
    quants = server.repo(QUANTS, downloads=1)
    quants.add("Nothing.Q4_K_M.gguf", tiny_gguf(work / "n4.gguf"))
    quants.add("Nothing.Q8_0.gguf", tiny_gguf(work / "n8.gguf"))
    from converters.unpack import unpack_tokenizer

    tok = server.repo(TOKENIZER, downloads=2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        tok.add(name, unpack_tokenizer(model_path, work / "tokenizer") / name)
    pickled = server.repo(PICKLED)
    pickled.add("config.json", b"{}")
    pickled.add("pytorch_model.bin", b"\x80\x04")
    return server
