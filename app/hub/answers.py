"""The hub's JSON answers, checked before anything uses them: a repo's listing and a search.

What decides a path or a byte count (a repo id, the commit, each file's name, size and
digests) must be exactly right or the whole answer is refused, naming the entry; a listing is
one answer, and a hub that sends one hostile name is not trusted for the others. What is only
shown (downloads, likes, a date, gated) is taken when it has the right type and left out when
not. Lists are bounded, so a listing of millions of entries costs a refusal, not the memory.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.hub.http import HubError
from app.hub.names import RemoteFile, is_commit, is_sha256, path_problem, repo_problem, shown

# Far above the largest model repos (a few thousand files), far below what costs memory to hold.
MAX_LISTING_FILES = 100_000
MAX_FILE_SIZE = 1 << 41  # 2 TiB: the hub's own limit per file is far lower
MAX_COUNT = 1 << 63


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", type(None): "null", bool: "true/false"}.get(
        type(value), "a number"
    )


def _size(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise HubError(f"{what}: size {shown(value)} is not a whole number")
    if value < 0 or value > MAX_FILE_SIZE:
        raise HubError(f"{what}: size {value} is not a file size (0 to {MAX_FILE_SIZE:,} bytes)")
    return value


def _file(entry: Any, what: str, index: int) -> RemoteFile:
    if not isinstance(entry, dict):
        raise HubError(f"{what}: file {index} is {_kind(entry)}, not an object")
    path = entry.get("rfilename")
    problem = path_problem(path)
    if problem:
        raise HubError(f"{what}: file name {shown(path)}: {problem}")
    where = f"{what}: {path}"
    lfs = entry.get("lfs")
    size = entry.get("size")
    if size is None and isinstance(lfs, dict):
        size = lfs.get("size")
    size = _size(size, where)
    sha256 = None
    if lfs is not None:
        if not isinstance(lfs, dict):
            raise HubError(f"{where}: its LFS entry is {_kind(lfs)}, not an object")
        sha256 = lfs.get("sha256")
        if isinstance(sha256, str):
            sha256 = sha256.lower()
        if not is_sha256(sha256):
            raise HubError(f"{where}: LFS SHA-256 {shown(sha256)} is not 64 hex digits")
        lfs_size = lfs.get("size", size)
        if _size(lfs_size, where) != size:
            raise HubError(f"{where}: two sizes ({size} and {lfs_size})")
    blob_id = entry.get("blobId")
    if blob_id is not None:
        if isinstance(blob_id, str):
            blob_id = blob_id.lower()
        if not is_commit(blob_id):  # a git blob id is a SHA-1, as a commit id is
            raise HubError(f"{where}: blob id {shown(blob_id)} is not 40 hex digits")
    return RemoteFile(path, size, sha256, blob_id)


def parse_listing(data: Any, repo: str) -> tuple[str, list[RemoteFile]]:
    """(the commit, every file) from `GET /api/models/{repo}?blobs=true`, or one line saying what is wrong."""
    what = f"{repo}: the hub's listing"
    if not isinstance(data, dict):
        raise HubError(f"{what} is {_kind(data)}, not an object")
    commit = data.get("sha")
    if not is_commit(commit):
        raise HubError(f"{what}: commit id {shown(commit)} is not 40 hex digits")
    siblings = data.get("siblings")
    if siblings is None:
        siblings = []
    if not isinstance(siblings, list):
        raise HubError(f"{what}: its files are {_kind(siblings)}, not a list")
    if len(siblings) > MAX_LISTING_FILES:
        raise HubError(f"{what}: {len(siblings):,} files, more than Cattery takes ({MAX_LISTING_FILES:,})")
    files = [_file(entry, what, i + 1) for i, entry in enumerate(siblings)]
    _check_unique(files, what)
    return commit, files


def _check_unique(files: list[RemoteFile], what: str) -> None:
    """No name twice (nor twice but for case or Unicode normalisation, one file on macOS and
    Windows disks), and no name that is both a file and a folder: each would make two
    downloads write one place."""
    seen: set[str] = set()
    folders: set[str] = set()
    for f in files:
        key = unicodedata.normalize("NFC", f.path).casefold()
        if key in seen:
            raise HubError(f"{what}: lists {shown(f.path)} twice")
        seen.add(key)
        parts = key.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    clash = seen & folders
    if clash:
        raise HubError(f"{what}: {shown(sorted(clash)[0])} is both a file and a folder")


# -- search ----------------------------------------------------------------------------------


@dataclass
class RepoHit:
    id: str
    downloads: int
    likes: int
    last_modified: datetime | None
    gated: bool
    smallest: int | None = None  # the smallest and largest GGUF model in it, in bytes
    largest: int | None = None
    models: int = 0


def _count(value: Any) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_COUNT
    return value if ok else 0


def _date(value: Any) -> datetime | None:
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def parse_search(data: Any, what: str, limit: int) -> list[RepoHit]:
    """The first `limit` repos of a search answer (`GET /api/models?search=…`)."""
    if not isinstance(data, list):
        raise HubError(f"{what}: the hub's answer is {_kind(data)}, not a list")
    hits = []
    for i, entry in enumerate(data[:limit]):
        if not isinstance(entry, dict):
            raise HubError(f"{what}: entry {i + 1} of the hub's answer is {_kind(entry)}, not an object")
        repo = entry.get("id", entry.get("modelId"))
        problem = repo_problem(repo)
        if problem:
            raise HubError(f"{what}: the hub's answer names a repo {shown(repo)}: {problem}")
        gated = entry.get("gated")
        hits.append(
            RepoHit(
                repo,
                _count(entry.get("downloads")),
                _count(entry.get("likes")),
                _date(entry.get("lastModified")),
                gated not in (None, False, "false", "") and isinstance(gated, bool | str),
            )
        )
    return hits
