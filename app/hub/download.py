"""Downloading models into the standard Hugging Face cache, resumably and verified.

Files land where `huggingface_hub` puts them (`models--owner--repo/blobs`, `snapshots`,
`refs`), so what other tools downloaded is found and reused, and they find ours.
Two things `hf_hub_download` does not do are done here (see DESIGN.md's pitfalls):

- resume across runs: a large file is fetched into `blobs/<sha256>.cattery-partial`,
  which is kept when the download stops for any reason (a dropped connection, a
  killed process, Ctrl-C) and continued with a `Range` request next time;
- verify: the bytes are hashed as they arrive and compared with the SHA-256 of the
  hub's LFS metadata; a file that does not match is deleted, never put in the cache.

The transfer itself is huggingface_hub's `http_get` (its headers, retries within a call,
the server ignoring a Range); putting the finished blob in place is `hf_hub_download`,
which finds the blob present and only writes the snapshot link and the ref.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from app.checkpoint_files import CHECKPOINT_FILES, PICKLE_SUFFIXES
from app.errors import CatteryError
from app.hub.names import GGUFModel, HubRef, RemoteFile, unique_quants
from app.hub.remote import HubError, hub_errors, offline, repo_models
from app.resources import require_disk

PARTIAL_SUFFIX = ".cattery-partial"


class DownloadCancelled(CatteryError):
    exit_code = 130


@dataclass
class Plan:
    """What a download will fetch: the files of one model (or checkpoint) at one commit."""

    repo: str
    commit: str
    label: str  # owner/repo:Q4_K_M, for people
    kind: str  # "gguf", "checkpoint" or "adapter"
    files: list[RemoteFile] = field(default_factory=list)
    revision: str = "main"

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class Progress:
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


# -- the cache -------------------------------------------------------------------------


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_cache(repo: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache_dir() / repo_folder_name(repo_id=repo, repo_type="model")


def cached_path(repo: str, path: str, revision: str | None = None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, path, revision=revision)
    return Path(found) if isinstance(found, str) else None


def partial_path(repo: str, f: RemoteFile) -> Path:
    return repo_cache(repo) / "blobs" / f"{f.sha256}{PARTIAL_SUFFIX}"


# -- downloading ---------------------------------------------------------------------------


class _HashingWriter:
    """The partial file, hashing what is written; http_get may rewind it (a server that ignored Range)."""

    def __init__(self, f: BinaryIO, hasher: Any) -> None:
        self.f = f
        self.hasher = hasher
        self.rewound = False

    def write(self, data: bytes) -> int:
        n = self.f.write(data)
        self.hasher.update(data)
        return n

    def tell(self) -> int:
        return self.f.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        self.rewound = True
        return self.f.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        self.rewound = True
        return self.f.truncate(size)

    def flush(self) -> None:
        self.f.flush()


def _hash_file(path: Path, hasher: Any) -> None:
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            hasher.update(block)


class _Meter:
    """Counts bytes for the progress callback and stops the transfer when cancelled."""

    def __init__(
        self, plan: Plan, done: int, callback: Callable[[Progress], None] | None, cancel: threading.Event | None
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
            self.callback(Progress(self.file, self.done, self.plan.size, speed, self.started))

    def bar_class(self) -> type:
        from huggingface_hub.utils import tqdm as hf_tqdm

        meter = self

        class _Bar(hf_tqdm):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)

            def update(self, n: float | None = 1) -> bool | None:
                meter.add(int(n or 0))
                return None

        return _Bar


def download(
    plan: Plan,
    *,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[Path]:
    """Fetch every file of the plan not in the cache yet; the local paths, in the plan's order."""
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its retry notes would break the progress line; errors come as ours
    cached = {f.path: cached_path(plan.repo, f.path, plan.commit) for f in plan.files}
    missing = [f for f in plan.files if cached[f.path] is None]
    if missing and offline():
        raise HubError(f"{plan.label}: not in the cache, and offline (HF_HUB_OFFLINE is set)")
    have = {f.path: _partial_size(plan.repo, f) for f in missing}
    need = sum(f.size - have[f.path] for f in missing)
    require_disk(cache_dir(), need, f"{plan.label} in the cache")
    done = plan.size - need
    meter = _Meter(plan, done, progress, cancel)
    for f in missing:
        meter.file = f.path
        if f.sha256:
            _fetch_lfs(plan, f, meter)
        else:
            _finish(plan, f)  # a small git file: huggingface_hub fetches it whole
            meter.add(f.size)
    return [cached_path(plan.repo, f.path, plan.commit) or _not_cached(plan, f) for f in plan.files]


def _not_cached(plan: Plan, f: RemoteFile) -> Path:
    raise CatteryError(f"{plan.repo}/{f.path}: downloaded but not found in the cache")


def _partial_size(repo: str, f: RemoteFile) -> int:
    if not f.sha256:
        return 0
    p = partial_path(repo, f)
    size = p.stat().st_size if p.is_file() else 0
    return size if size <= f.size else 0


def _fetch_lfs(plan: Plan, f: RemoteFile, meter: _Meter) -> None:
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    assert f.sha256 is not None
    partial = partial_path(plan.repo, f)
    partial.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.is_file() else 0
    if have > f.size:  # not ours to continue: start over
        partial.unlink()
        have = 0
    hasher = hashlib.sha256()
    if have:
        _hash_file(partial, hasher)
    url = hf_hub_url(plan.repo, f.path, revision=plan.commit, endpoint=constants.ENDPOINT)
    try:
        with partial.open("ab") as out:
            writer = _HashingWriter(out, hasher)
            with hub_errors(f"{plan.repo}/{f.path}"):
                try:
                    http_get(
                        url,
                        writer,  # type: ignore[arg-type]
                        resume_size=have,
                        headers=build_hf_headers(),
                        expected_size=f.size,
                        displayed_filename=f.path,
                        tqdm_class=meter.bar_class(),
                    )
                except (DownloadCancelled, OSError):
                    raise
                except Exception as exc:
                    if type(exc).__module__.startswith(("httpx", "httpcore")):
                        kept = partial.stat().st_size
                        raise HubError(
                            f"{plan.repo}/{f.path}: the connection failed ({type(exc).__name__}); "
                            f"{kept / 1e6:.1f} of {f.size / 1e6:.1f} MB are kept: run the same command again to resume"
                        ) from None
                    raise
    except OSError as exc:
        kept = partial.stat().st_size if partial.is_file() else 0
        raise CatteryError(
            f"{partial.parent}: cannot write ({exc.strerror or exc}); {kept / 1e6:.1f} MB kept for a resume"
        ) from None
    if writer.rewound:
        hasher = hashlib.sha256()
        _hash_file(partial, hasher)
    size = partial.stat().st_size
    got = hasher.hexdigest()
    if size != f.size or got != f.sha256:
        partial.unlink(missing_ok=True)
        what = (
            f"{size} bytes instead of {f.size}"
            if size != f.size
            else f"SHA-256 {got[:12]}… instead of {f.sha256[:12]}…"
        )
        raise CatteryError(
            f"{plan.repo}/{f.path}: the downloaded file does not match the hub's SHA-256 ({what}); "
            "it was deleted: run the command again"
        )
    blob = partial.with_name(f.sha256)
    os.replace(partial, blob)
    _finish(plan, f)


def _finish(plan: Plan, f: RemoteFile) -> None:
    """Let huggingface_hub put the file in the cache: with the blob present it only links it."""
    from huggingface_hub import constants, hf_hub_download

    with hub_errors(f"{plan.repo}/{f.path}"):
        # writes refs/<revision> too, so other tools find the file by the branch name
        hf_hub_download(plan.repo, f.path, revision=plan.revision, endpoint=constants.ENDPOINT)
