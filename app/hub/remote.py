"""Talking to the Hugging Face hub: search, a repo's files, a remote GGUF's header read by range
requests, each answer bounded and checked (app.hub.http, app.hub.answers) and each failure one line.

`HF_ENDPOINT`, `HF_TOKEN` and `HF_HUB_OFFLINE` are huggingface_hub's own and are respected
as it reads them; Cattery adds nothing of its own to the connection.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from app.errors import CatteryError
from app.hub.answers import RepoHit, parse_listing, parse_search
from app.hub.http import (
    HEADER_BLOCK,
    HubError,
    RangeFile,
    endpoint,
    first_line,
    get_json,
    hub_errors,
    offline,
    resolve_url,
)
from app.hub.names import GGUFModel, RemoteFile, group_gguf, path_problem, repo_problem, revision_problem, shown

if TYPE_CHECKING:
    from app.engine.metadata import ModelInfo

__all__ = [
    "HEADER_BLOCK",
    "HubError",
    "RepoHit",
    "check_repo",
    "check_revision",
    "hub_errors",
    "offline",
    "remote_headers",
    "remote_model_info",
    "repo_files",
    "repo_models",
    "search",
]

MAX_LISTING_BYTES = 8 * 1024 * 1024  # ~40,000 files of an honest listing; ~120 MB once parsed at worst
MAX_SEARCH_BYTES = 4 * 1024 * 1024  # 1,000 hits (the hub's largest page) take ~0.5 MB
MAX_SIZES_BYTES = 512 * 1024  # a listing read only for a search hit's size range (honest: ~10 kB)
SIZES_WORKERS = 6  # listings read at once for the size ranges: ~8 MB each at worst once parsed
SIZES_SECONDS = 3.0  # size ranges are a decoration: the hits not sized by then show none
MAX_QUERY_CHARS = 200
MAX_SEARCH_LIMIT = 1000  # the hub's own page size
MAX_SIZED_HITS = 100  # search hits whose size range is looked up
MAX_HEADER_READS = 64  # a repo's models whose headers `models files` reads
HEADER_WORKERS = 4  # at once: each may hold a few MB of blocks while it parses


def check_repo(repo: str) -> str:
    problem = repo_problem(repo)
    if problem:
        raise HubError(f"{shown(repo)}: not a repo on the hub: {problem}")
    return repo


def check_revision(repo: str, revision: str | None) -> str | None:
    if revision is not None:
        problem = revision_problem(revision)
        if problem:
            raise HubError(f"{repo}: revision {shown(revision)}: {problem}")
    return revision


# -- search --------------------------------------------------------------------------


def search(query: str, limit: int = 20, *, sizes: bool = True) -> list[RepoHit]:
    """GGUF repos whose id contains the words, most downloaded first (the hub matches ids only)."""
    what = f"search {query[:60]!r}"
    if len(query) > MAX_QUERY_CHARS:
        raise HubError(f"{what}: longer than {MAX_QUERY_CHARS} characters (the hub matches repo names)")
    if not 1 <= limit <= MAX_SEARCH_LIMIT:
        raise HubError(f"{what}: a limit of {limit}; the hub gives 1 to {MAX_SEARCH_LIMIT} at a time")
    params = {"search": query, "filter": "gguf", "sort": "downloads", "limit": limit}
    data = get_json(f"{endpoint()}/api/models", what, params=params, max_bytes=MAX_SEARCH_BYTES)
    hits = parse_search(data, what, limit)
    if sizes and hits:
        _size_ranges(hits[:MAX_SIZED_HITS])
    return hits


def _size_range(repo: str) -> tuple[int, int, int] | None:
    """(smallest, largest, how many) of a repo's GGUF models; None when it cannot be listed."""
    try:
        _, models, _ = repo_models(repo, max_bytes=MAX_SIZES_BYTES)
    except HubError:
        return None
    if not models:
        return None
    sizes = [m.size for m in models]
    return min(sizes), max(sizes), len(sizes)


def _size_ranges(hits: list[RepoHit]) -> None:
    """One listing per hit, a few at a time, for as long as SIZES_SECONDS allow; a hit whose
    listing is not read by then (or cannot be) just shows no sizes."""
    from concurrent.futures import wait

    pool = ThreadPoolExecutor(max_workers=SIZES_WORKERS)
    futures = {pool.submit(_size_range, hit.id): hit for hit in hits}
    done, _ = wait(futures, timeout=SIZES_SECONDS)
    pool.shutdown(wait=False, cancel_futures=True)
    for future in done:
        found = future.result()
        if found is not None:
            hit = futures[future]
            hit.smallest, hit.largest, hit.models = found


# -- a repo's files --------------------------------------------------------------------


def repo_files(
    repo: str, revision: str | None = None, *, max_bytes: int = MAX_LISTING_BYTES
) -> tuple[str, list[RemoteFile]]:
    """(the commit, every file with its size and digests), every name checked."""
    check_repo(repo)
    check_revision(repo, revision)
    url = f"{endpoint()}/api/models/{repo}"
    if revision is not None:
        url += f"/revision/{quote(revision, safe='')}"
    data = get_json(url, repo, params={"blobs": "true"}, max_bytes=max_bytes)
    return parse_listing(data, repo)


def repo_models(
    repo: str, revision: str | None = None, *, max_bytes: int = MAX_LISTING_BYTES
) -> tuple[str, list[GGUFModel], list[RemoteFile]]:
    """(the commit, the GGUF models, every file)."""
    commit, files = repo_files(repo, revision, max_bytes=max_bytes)
    return commit, group_gguf(files), files


# -- a remote GGUF's header ---------------------------------------------------------------

# What a header parser may raise on bytes it did not expect, besides its own error.
_HEADER_FAULTS = (ValueError, struct.error, OverflowError, EOFError, IndexError, KeyError, RecursionError)


def remote_model_info(repo: str, path: str, *, revision: str | None = None, size: int | None = None) -> ModelInfo:
    """A remote GGUF's header, read with range requests (a few MB of a file of many GB, never
    more than app.hub.http.MAX_HEADER_BYTES); whatever goes wrong is one line."""
    from app.engine.metadata import model_info_from

    check_repo(repo)
    check_revision(repo, revision)
    problem = path_problem(path)
    if problem:
        raise HubError(f"{repo}: file name {shown(path)}: {problem}")
    where = f"{repo}/{path}"
    with hub_errors(where):
        f = RangeFile(resolve_url(repo, revision or "main", path), where, size)
        try:
            return model_info_from(f, Path(path), size if size is not None else f.total())  # type: ignore[arg-type]
        except HubError:
            raise
        except CatteryError as exc:  # the header parser's line names the file: with its repo, here
            text = str(exc)
            raise HubError(f"{repo}/{text}" if text.startswith(f"{path}:") else f"{where}: {text}") from None
        except _HEADER_FAULTS as exc:
            raise HubError(f"{where}: the header is not readable ({type(exc).__name__}: {first_line(exc)})") from None


def remote_headers(
    repo: str, commit: str, models: list[GGUFModel], *, limit: int = MAX_HEADER_READS
) -> Iterator[tuple[GGUFModel, ModelInfo | CatteryError]]:
    """Each model's header (or the one-line error that came instead), a few at a time, in the
    listing's order as they arrive; past `limit` models, the rest are not read (a listing of
    thousands would take thousands of requests). The command line and the Hub screen share it."""

    def read(model: GGUFModel) -> tuple[GGUFModel, ModelInfo | CatteryError]:
        try:
            return model, remote_model_info(repo, model.first.path, revision=commit, size=model.first.size)
        except CatteryError as exc:
            return model, exc

    with ThreadPoolExecutor(max_workers=HEADER_WORKERS) as pool:
        yield from pool.map(read, models[:limit])
    skipped = HubError(f"{repo}: header not read (Cattery reads the first {limit} models of a repo)")
    for model in models[limit:]:
        yield model, skipped
