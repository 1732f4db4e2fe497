"""Talking to the Hugging Face hub through `huggingface_hub`: search, a repo's files, a remote
GGUF's header read by range requests, with the hub's errors turned into one clear line.

`HF_ENDPOINT`, `HF_TOKEN` and `HF_HUB_OFFLINE` are huggingface_hub's own and are respected
as it reads them; Cattery adds nothing of its own to the connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import CatteryError
from app.hub.names import GGUFModel, RemoteFile, group_gguf

if TYPE_CHECKING:
    from app.engine.metadata import ModelInfo

HEADER_BLOCK = 2 * 1024 * 1024  # range requests read the remote header in blocks of this size


class HubError(CatteryError):
    """The hub said no, or could not be reached."""


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _api() -> Any:
    from huggingface_hub import HfApi

    return HfApi()


@contextlib.contextmanager
def hub_errors(what: str) -> Iterator[None]:
    """The hub's exceptions as one line each, naming what was asked for."""
    from huggingface_hub import errors

    if offline():
        raise HubError(f"{what}: offline (HF_HUB_OFFLINE is set), the hub is not asked")
    try:
        yield
    except errors.GatedRepoError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", 401)
        if status == 403:
            raise HubError(
                f"{what}: gated, and HF_TOKEN has no access to it: accept its terms on the hub with that account"
            ) from None
        raise HubError(
            f"{what}: gated: accept its terms on the hub and set HF_TOKEN to a token of that account"
        ) from None
    except errors.RepositoryNotFoundError:
        raise HubError(f"{what}: no such repo on the hub (a private one needs HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise HubError(f"{what}: no such revision") from None
    except errors.RemoteEntryNotFoundError:
        raise HubError(f"{what}: no such file in the repo") from None
    except errors.OfflineModeIsEnabled:
        raise HubError(f"{what}: offline (HF_HUB_OFFLINE is set)") from None
    except errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        if status == 401:
            raise HubError(f"{what}: the hub refused HF_TOKEN (401): check the token") from None
        if status == 403:
            raise HubError(f"{what}: forbidden (403): HF_TOKEN has no access") from None
        raise HubError(f"{what}: the hub answered {status}") from None
    except OSError as exc:  # connection refused, DNS, timeouts (httpx errors are OSError-like)
        raise HubError(f"{what}: cannot reach the hub ({type(exc).__name__}: {exc})") from None
    except Exception as exc:
        if type(exc).__module__.startswith(("httpx", "httpcore")):
            raise HubError(f"{what}: cannot reach the hub ({type(exc).__name__})") from None
        raise


# -- search --------------------------------------------------------------------------


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


def search(query: str, limit: int = 20, *, sizes: bool = True) -> list[RepoHit]:
    """GGUF repos whose id contains the words, most downloaded first (the hub matches ids only)."""
    with hub_errors(f"search {query!r}"):
        found = list(_api().list_models(search=query, filter="gguf", sort="downloads", limit=limit))
    hits = [
        RepoHit(
            m.id,
            int(m.downloads or 0),
            int(m.likes or 0),
            m.last_modified,
            bool(m.gated),
        )
        for m in found
    ]
    if sizes and hits:
        # One listing per repo for its size range, a few at a time.
        def size_range(hit: RepoHit) -> None:
            try:
                _, models, _ = repo_models(hit.id)
            except HubError:
                return
            if models:
                hit.smallest = min(m.size for m in models)
                hit.largest = max(m.size for m in models)
                hit.models = len(models)

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(size_range, hits))
    return hits


# -- a repo's files --------------------------------------------------------------------


def repo_files(repo: str, revision: str | None = None) -> tuple[str, list[RemoteFile]]:
    """(the commit, every file with its size and LFS SHA-256)."""
    with hub_errors(repo):
        info = _api().model_info(repo, revision=revision, files_metadata=True)
    files = [RemoteFile(s.rfilename, int(s.size or 0), (s.lfs.sha256 if s.lfs else None)) for s in info.siblings or []]
    return str(info.sha), files


def repo_models(repo: str, revision: str | None = None) -> tuple[str, list[GGUFModel], list[RemoteFile]]:
    """(the commit, the GGUF models, every file)."""
    commit, files = repo_files(repo, revision)
    return commit, group_gguf(files), files


def remote_model_info(repo: str, path: str, *, revision: str | None = None, size: int | None = None) -> ModelInfo:
    """A remote GGUF's header, read with range requests (a few MB of a file of many GB)."""
    from huggingface_hub import HfFileSystem

    from app.engine.metadata import model_info_from

    fs = HfFileSystem()
    where = f"{repo}/{path}"
    with hub_errors(where), fs.open(where, "rb", revision=revision, block_size=HEADER_BLOCK) as f:
        return model_info_from(f, Path(path), size if size is not None else int(f.size))
