"""Downloading models into the standard Hugging Face cache, resumably, verified and bounded.

Files land where `huggingface_hub` puts them (`models--owner--repo/blobs`, `snapshots`,
`refs`; app.hub.cache), so what other tools downloaded is found and reused, and they find ours.
Three things `hf_hub_download` does not do are done here (see DESIGN.md's pitfalls):

- resume across runs: a file is fetched into `blobs/<digest>.cattery-partial`, which is
  kept when the download stops for any reason (a dropped connection, a killed process,
  Ctrl-C) and continued with a `Range` request next time;
- verify: the bytes are hashed as they arrive and compared with the SHA-256 of the hub's
  LFS metadata (or the git blob id of a small file); a file that does not match is deleted,
  never put in the cache;
- bound: no more than the size the listing declares is ever written; a body that runs on
  past it is refused (and deleted) at the first byte too many.

The listing's names and digests were checked before a plan is made (app.hub.answers), and
the cache checks every folder it writes into (app.hub.cache).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.checkpoint_files import CHECKPOINT_FILES, PICKLE_SUFFIXES
from app.errors import CatteryError, DiskError, disk_error
from app.hub.cache import (
    PARTIAL_SUFFIX,
    blob_name,
    blobs_dir,
    cache_dir,
    cached_path,
    link_snapshot,
    repo_cache,
    write_ref,
)
from app.hub.cache import partial_path as _partial_path
from app.hub.http import HubRefusal, Unpacker, resolve_url, stream
from app.hub.names import GGUFModel, HubRef, RemoteFile, unique_quants
from app.hub.remote import HubError, check_revision, offline, repo_models
from app.resources import require_disk

__all__ = [
    "PARTIAL_SUFFIX",
    "DownloadCancelled",
    "DownloadStatus",
    "Plan",
    "cache_dir",
    "cached_path",
    "choose_model",
    "download",
    "partial_path",
    "plan_download",
    "repo_cache",
]

RETRIES = 5  # failed attempts in a row (no new bytes) before a download gives up for this run
SHORT_ANSWERS = 5  # answers that end early without an error, in all, before it gives up


class DownloadCancelled(CatteryError):
    exit_code = 130


@dataclass
class Plan:
    """What a download will fetch: the files of one model (or checkpoint) at one commit."""

    repo: str
    commit: str
    label: str  # owner/repo:Q4_K_M, for people
    kind: str  # "gguf", "checkpoint", "adapter" or "tokenizer"
    files: list[RemoteFile] = field(default_factory=list)
    revision: str = "main"

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class DownloadStatus:
    """How far a download is, as its progress callback gets it (a transfer has a speed; a conversion,
    which reports through app.progress.Progress, does not)."""

    file: str
    done: int  # bytes of the whole plan on disk so far
    total: int
    speed: float  # bytes per second over the last seconds
    started: float

    @property
    def eta(self) -> float | None:
        return (self.total - self.done) / self.speed if self.speed > 0 else None


def choose_model(repo: str, models: list[GGUFModel], selector: str | None) -> GGUFModel:
    """The model a selector names (a file or a quant type), or the only one there is."""
    if selector:
        found = [m for m in models if m.matches(selector)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(m.name for m in found)
            raise CatteryError(f"{repo}:{selector}: several files match ({names}); name the file")
        raise CatteryError(
            f"{repo} has no GGUF file {selector!r}; it has: {_names(repo, models)} (`cattery models files {repo}`)"
        )
    if len(models) == 1:
        return models[0]
    raise CatteryError(f"{repo} has {len(models)} GGUF models; choose one: {_names(repo, models)}")


def _names(repo: str, models: list[GGUFModel]) -> str:
    unique = unique_quants(models)
    labels = [m.label(repo, m.quant in unique) for m in models]
    return ", ".join(labels[:12]) + (f", … ({len(labels)} in all)" if len(labels) > 12 else "")


def plan_download(ref: HubRef, revision: str | None = None) -> Plan:
    check_revision(ref.repo, revision)
    commit, models, files = repo_models(ref.repo, revision)
    if models and ref.selector != "safetensors":
        model = choose_model(ref.repo, models, ref.selector)
        if not model.complete:
            raise CatteryError(f"{ref.repo}: {model.name} is split but some of its parts are missing on the hub")
        label = model.label(ref.repo, model.quant in unique_quants(models))
        return Plan(ref.repo, commit, label, "gguf", list(model.parts), revision or "main")
    weights = [f for f in files if f.path.endswith(".safetensors")]
    if not weights:
        pickled = [f.path for f in files if f.path.endswith(PICKLE_SUFFIXES)]
        if pickled:
            raise CatteryError(
                f"{ref.repo} has only pickled weights ({pickled[0]}, …): Cattery never loads those; "
                "look for a safetensors or GGUF version of the model"
            )
        raise CatteryError(f"{ref.repo} has no GGUF files and no safetensors checkpoint")
    names = {f.path.rsplit("/", 1)[-1] for f in files}
    if "adapter_config.json" in names:  # a PEFT adapter (a LoRA) for `cattery merge`
        extra = [f for f in files if f.path.rsplit("/", 1)[-1] in ("adapter_config.json", *CHECKPOINT_FILES)]
        adapter = sorted(weights + extra, key=lambda f: f.path)
        return Plan(ref.repo, commit, f"{ref.repo} (LoRA adapter)", "adapter", adapter, revision or "main")
    wanted = weights + [f for f in files if f.path.rsplit("/", 1)[-1] in CHECKPOINT_FILES]
    if not any(f.path.endswith("config.json") for f in wanted):
        raise CatteryError(f"{ref.repo}: the checkpoint has no config.json; the converters cannot use it")
    files_sorted = sorted(wanted, key=lambda f: f.path)
    return Plan(ref.repo, commit, f"{ref.repo} (safetensors)", "checkpoint", files_sorted, revision or "main")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
MAX_TOKENIZER_DOWNLOAD = 64 << 20


def plan_tokenizer(repo: str, revision: str | None = None) -> Plan:
    """A model's tokenizer.json (and its tokenizer_config.json) from its hub repo, without its
    weights: what counts a remote engine's tokens when the server cannot."""
    check_revision(repo, revision)
    commit, _models, files = repo_models(repo, revision)
    wanted = [f for f in files if f.path in TOKENIZER_FILES]
    if not any(f.path == "tokenizer.json" for f in wanted):
        raise CatteryError(
            f"{repo} has no tokenizer.json (GGUF repos often have none): name the original model's repo, "
            "or a local GGUF of the served model"
        )
    too_big = [f for f in wanted if f.size > MAX_TOKENIZER_DOWNLOAD]
    if too_big:
        raise CatteryError(f"{repo}/{too_big[0].path}: {too_big[0].size >> 20} MB is not a tokenizer")
    files_sorted = sorted(wanted, key=lambda f: f.path)
    return Plan(repo, commit, f"{repo} (tokenizer)", "tokenizer", files_sorted, revision or "main")


# -- the cache -------------------------------------------------------------------------


def partial_path(repo: str, f: RemoteFile, commit: str = "") -> Path:
    """Where the download of `f` is kept until it is checked: named after its digest, or (a
    small file the hub gave no blob id for) after a hash of its commit and name."""
    digest = f.sha256 or f.blob_id or hashlib.sha256(f"{commit}/{f.path}".encode()).hexdigest()
    return _partial_path(repo, digest)


# -- downloading ---------------------------------------------------------------------------


def _hash_file(path: Path, hasher: Any) -> None:
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            hasher.update(block)


class _ByteCounter:
    """Counts a transfer's bytes, measures its speed for the progress callback, and stops it when cancelled."""

    def __init__(
        self, plan: Plan, done: int, callback: Callable[[DownloadStatus], None] | None, cancel: threading.Event | None
    ):
        self.plan = plan
        self.done = done
        self.callback = callback
        self.cancel = cancel
        self.started = time.monotonic()
        self.samples: list[tuple[float, int]] = [(self.started, done)]
        self.file = ""
        self.last_call = 0.0

    def add(self, n: int) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise DownloadCancelled(f"{self.plan.label}: download cancelled; run it again to resume")
        self.done += n
        now = time.monotonic()
        self.samples.append((now, self.done))
        while len(self.samples) > 2 and now - self.samples[0][0] > 5:
            self.samples.pop(0)
        if self.callback is not None and (now - self.last_call > 0.1 or self.done >= self.plan.size):
            self.last_call = now
            t0, d0 = self.samples[0]
            speed = (self.done - d0) / (now - t0) if now > t0 else 0.0
            self.callback(DownloadStatus(self.file, self.done, self.plan.size, speed, self.started))


def download(
    plan: Plan,
    *,
    progress: Callable[[DownloadStatus], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[Path]:
    """Fetch every file of the plan not in the cache yet; the local paths, in the plan's order."""
    cached = {f.path: cached_path(plan.repo, f.path, plan.commit) for f in plan.files}
    missing = [f for f in plan.files if cached[f.path] is None]
    if missing and offline():
        raise HubError(f"{plan.label}: not in the cache, and offline (HF_HUB_OFFLINE is set)")
    have = {f.path: _partial_size(plan, f) for f in missing}
    need = sum(f.size - have[f.path] for f in missing)
    require_disk(cache_dir(), need, f"{plan.label} in the cache")
    done = plan.size - need
    counter = _ByteCounter(plan, done, progress, cancel)
    for f in missing:
        counter.file = f.path
        blob = _Transfer(plan, f, counter).run()
        try:
            link_snapshot(plan.repo, plan.commit, f.path, blob)
        except OSError as exc:
            raise disk_error(exc, "put the download in the Hugging Face cache") from None
    if missing:
        try:
            write_ref(plan.repo, plan.revision, plan.commit)
        except OSError as exc:
            raise disk_error(exc, "write the branch's ref in the Hugging Face cache") from None
    return [cached_path(plan.repo, f.path, plan.commit) or _not_cached(plan, f) for f in plan.files]


def _not_cached(plan: Plan, f: RemoteFile) -> Path:
    raise CatteryError(f"{plan.repo}/{f.path}: downloaded but not found in the cache")


def _partial_size(plan: Plan, f: RemoteFile) -> int:
    p = partial_path(plan.repo, f, plan.commit)
    if p.is_symlink() or not p.is_file():
        return 0
    size = p.stat().st_size
    return size if size <= f.size else 0


class _Transfer:
    """One file into its partial file: appended, hashed as it arrives, never past the declared
    size; continued with a Range after a dropped connection; checked, then renamed to its blob."""

    def __init__(self, plan: Plan, f: RemoteFile, meter: _ByteCounter) -> None:
        self.plan = plan
        self.f = f
        self.meter = meter
        self.what = f"{plan.repo}/{f.path}"
        self.partial = partial_path(plan.repo, f, plan.commit)
        self.hasher = self._new_hasher()
        self.have = 0

    def _new_hasher(self) -> Any:
        if self.f.sha256:
            return hashlib.sha256()
        h = hashlib.sha1()  # a git blob id: SHA-1 of "blob <size>\0" and the bytes
        h.update(b"blob %d\0" % self.f.size)
        return h

    def run(self) -> Path:
        try:
            blobs = blobs_dir(self.plan.repo)
            digest = self.f.sha256 or self.f.blob_id
            if digest:
                blob = blobs / blob_name(digest)
                if not blob.is_symlink() and blob.is_file() and blob.stat().st_size == self.f.size:
                    self.meter.add(self.f.size)  # the same bytes are there already, under another name
                    return blob
            with os.fdopen(self._open_partial(), "ab") as out:
                self._receive(out)
            return self._check_and_keep(blobs)
        except OSError as exc:  # a full disk, a read-only cache: one line, what arrived is kept
            raise self._disk_full(exc) from None

    def _open_partial(self) -> int:
        if self.partial.is_symlink():  # not ours: never written through
            self.partial.unlink()
        self.have = self.partial.stat().st_size if self.partial.is_file() else 0
        if self.have > self.f.size:  # not ours to continue: start over
            self.partial.unlink()
            self.have = 0
        if self.have:
            _hash_file(self.partial, self.hasher)
        return os.open(self.partial, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)

    def _disk_full(self, exc: OSError) -> DiskError:
        try:
            kept = self.partial.stat().st_size if self.partial.is_file() else 0
        except OSError:
            kept = 0
        reason = exc.strerror or type(exc).__name__
        return DiskError(f"{self.partial.parent}: cannot write ({reason}); {kept / 1e6:.1f} MB kept for a resume")

    def _receive(self, out: Any) -> None:
        """Answers until the declared size is there: a dropped connection is retried from where
        it stopped (RETRIES in a row without new bytes), an answer that ends early is asked again
        (SHORT_ANSWERS in all); giving up keeps what arrived, for the next run."""
        import httpx2

        failures = short = 0
        while self.have < self.f.size:
            if offline():
                raise HubError(f"{self.what}: offline (HF_HUB_OFFLINE is set), the hub is not asked")
            before = self.have
            try:
                self._answer(out)
            except httpx2.TransportError as exc:
                failures = 1 if self.have > before else failures + 1
                if failures >= RETRIES:
                    raise HubError(
                        f"{self.what}: the connection failed ({type(exc).__name__}); {self.have / 1e6:.1f} of "
                        f"{self.f.size / 1e6:.1f} MB are kept: run the same command again to resume"
                    ) from None
                time.sleep(1)
                continue
            except (httpx2.HTTPError, httpx2.InvalidURL, httpx2.StreamError) as exc:
                raise HubError(f"{self.what}: cannot reach the hub ({type(exc).__name__})") from None
            except HubRefusal as exc:
                if exc.status != 416 or not self.have:
                    raise
                short = SHORT_ANSWERS  # no bytes past what arrived: the hub's file is shorter than it says
            else:
                short += self.have < self.f.size  # the answer ended early, without an error
            if short >= SHORT_ANSWERS:
                raise HubError(
                    f"{self.what}: the hub sent {self.have:,} of the {self.f.size:,} bytes its listing declares; "
                    "what arrived is kept: run the same command again to resume"
                )

    def _answer(self, out: Any) -> None:
        """One GET from where the partial file ends, appended to it."""
        url = resolve_url(self.plan.repo, self.plan.commit, self.f.path)
        headers = {"Range": f"bytes={self.have}-"} if self.have else {}
        with stream(url, self.what, headers=headers) as r:
            if self.have and r.status_code != 206:  # the server ignored the Range: start over
                out.truncate(0)
                self.meter.add(-self.have)
                self.have = 0
                self.hasher = self._new_hasher()
            elif self.have:
                first = r.headers.get("Content-Range", "").removeprefix("bytes").strip().partition("-")[0]
                if first != str(self.have):
                    raise HubError(f"{self.what}: the hub sent a range other than the one asked for")
            room = self.f.size - self.have
            unpack = Unpacker(r.headers.get("Content-Encoding", ""), self.what, room)
            for chunk in r.iter_raw():
                data = unpack.feed(chunk)
                if unpack.out > room:
                    self._too_long(out)
                if data:
                    out.write(data)
                    self.hasher.update(data)
                    self.have += len(data)
                    self.meter.add(len(data))

    def _too_long(self, out: Any) -> None:
        out.close()
        self.partial.unlink(missing_ok=True)
        raise HubError(
            f"{self.what}: the hub sent more than the {self.f.size:,} bytes its listing declares; "
            "nothing past that was written, and what arrived was deleted"
        )

    def _check_and_keep(self, blobs: Path) -> Path:
        size = self.partial.stat().st_size
        got = self.hasher.hexdigest()
        want = self.f.sha256 or self.f.blob_id or got
        if size != self.f.size or got != want:
            self.partial.unlink(missing_ok=True)
            kind = "SHA-256" if self.f.sha256 else "git blob id"
            what = (
                f"{size} bytes instead of {self.f.size}"
                if size != self.f.size
                else f"{kind} {got[:12]}… instead of {want[:12]}…"
            )
            raise HubError(
                f"{self.what}: the downloaded file does not match the hub's {kind} ({what}); "
                "it was deleted: run the command again"
            )
        blob = blobs / blob_name(got)
        os.replace(self.partial, blob)
        return blob
