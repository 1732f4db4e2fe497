"""Where downloads land: the standard Hugging Face cache, and nowhere else.

The layout is huggingface_hub's (`models--owner--repo/blobs/<digest>`,
`snapshots/<commit>/<file>` linking to the blob, `refs/<branch>` holding the commit), so
other tools find what Cattery downloaded and Cattery finds theirs. Cattery writes it itself
rather than through `hf_hub_download`, which names the blob after the server's ETag and the
snapshot after its `X-Repo-Commit` header: here every name was checked first
(app.hub.names), and every folder written into is checked once more after links are
followed, so that a link planted in the cache cannot lead a write out of it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from app.atomic import write_text_atomic
from app.hub.http import HubError
from app.hub.names import is_commit, is_sha256, path_problem, repo_problem, revision_problem, shown

PARTIAL_SUFFIX = ".cattery-partial"


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_cache(repo: str) -> Path:
    problem = repo_problem(repo)
    if problem:
        raise HubError(f"{shown(repo)}: not a repo on the hub: {problem}")
    return cache_dir() / f"models--{repo.replace('/', '--')}"


def cached_path(repo: str, path: str, revision: str | None = None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, path, revision=revision)
    return Path(found) if isinstance(found, str) else None


def folder_inside(folder: Path, root: Path) -> Path:
    """Make `folder` (a path under `root`, built from checked names) and check that it stays
    inside `root` once links are followed, one level at a time, before anything goes in it."""
    root.mkdir(parents=True, exist_ok=True)
    real_root = root.resolve()
    here = root
    for part in folder.relative_to(root).parts:
        here = here / part
        if here.is_symlink():
            if not here.resolve().is_relative_to(real_root):
                raise HubError(f"{here}: a link that leads out of the Hugging Face cache; nothing written")
            if not here.exists():
                raise HubError(f"{here}: a broken link in the Hugging Face cache; nothing written")
        elif not here.exists():
            here.mkdir()
        if not here.resolve().is_relative_to(real_root):
            raise HubError(f"{here}: leads out of the Hugging Face cache; nothing written")
        if not here.is_dir():
            raise HubError(f"{here}: a file where the Hugging Face cache needs a folder")
    return here


def blobs_dir(repo: str) -> Path:
    root = repo_cache(repo)
    return folder_inside(root / "blobs", root)


def blob_name(digest: str) -> str:
    """A blob is named after its SHA-256 (LFS files) or its git blob id (small files)."""
    if not (is_commit(digest) or is_sha256(digest)):
        raise HubError(f"{shown(digest)}: not a digest; it cannot name a file in the cache")
    return digest


def partial_path(repo: str, digest: str) -> Path:
    """Where a download in progress is kept (between runs too) until it is checked."""
    return repo_cache(repo) / "blobs" / f"{blob_name(digest)}{PARTIAL_SUFFIX}"


def link_snapshot(repo: str, commit: str, path: str, blob: Path) -> Path:
    """`snapshots/<commit>/<path>` as a relative link to the blob (what huggingface_hub makes)."""
    if not is_commit(commit):
        raise HubError(f"{repo}: commit id {shown(commit)} is not 40 hex digits")
    problem = path_problem(path)
    if problem:
        raise HubError(f"{repo}: file name {shown(path)}: {problem}")
    root = repo_cache(repo)
    *folders, name = path.split("/")
    where = folder_inside(root.joinpath("snapshots", commit, *folders), root)
    pointer = where / name
    temp = where / f".cattery-link-{uuid.uuid4().hex}"
    try:
        os.symlink(os.path.relpath(blob, where), temp)
    except OSError:  # a disk without links (some Windows setups): the blob itself goes there
        os.replace(blob, pointer)
        return pointer
    try:
        os.replace(temp, pointer)  # replaces a stale link, never writes through one
    except OSError:
        temp.unlink(missing_ok=True)
        raise
    return pointer


def write_ref(repo: str, revision: str, commit: str) -> None:
    """`refs/<revision>` holds the commit, so that other tools find the files by the branch name."""
    if revision == commit:
        return
    problem = revision_problem(revision)
    if problem or not is_commit(commit):
        raise HubError(f"{repo}: revision {shown(revision)} or commit {shown(commit)} cannot name a ref")
    root = repo_cache(repo)
    *folders, name = revision.split("/")
    where = folder_inside(root.joinpath("refs", *folders), root)
    write_text_atomic(where / name, commit)
