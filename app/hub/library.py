"""The local model library: which GGUF files Cattery knows by name, and resolving `M` to a file.

`M` on the command line is a path to a `.gguf` file or a library name (the file's
stem, matched without case). The library is the bundled model, `.gguf` files under
the data dir's `models/` folder, and the folders listed in `[model] dirs`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from app.errors import CatteryError, ModelFileError
from app.hub.bundled import find_bundled_model, missing_model_message


@dataclass(frozen=True)
class LibraryEntry:
    name: str
    path: Path
    source: str  # "bundled" or the folder it was found in


def _gguf_files(folder: Path) -> Iterator[Path]:
    if folder.is_dir():
        yield from sorted(p for p in folder.rglob("*.gguf") if p.is_file())


def library_entries(model_dirs: Iterable[Path]) -> list[LibraryEntry]:
    entries: list[LibraryEntry] = []
    bundled = find_bundled_model()
    if bundled is not None:
        entries.append(LibraryEntry(bundled.stem, bundled, "bundled"))
    seen = {e.path.resolve() for e in entries}
    for folder in model_dirs:
        for path in _gguf_files(Path(folder).expanduser()):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                entries.append(LibraryEntry(path.stem, path, str(folder)))
    return entries


def hf_cache_entries() -> list[LibraryEntry]:
    """GGUF files other tools (or Cattery) downloaded into the standard Hugging Face cache.

    Imports huggingface_hub, so callers that must start fast (the CLI) do not use it;
    the model screen does, in a worker.
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound, CorruptedCacheException

    try:
        info = scan_cache_dir()
    except (CacheNotFound, CorruptedCacheException, OSError):
        return []
    out: list[LibraryEntry] = []
    seen: set[Path] = set()
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model":
            continue
        for revision in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            for f in sorted(revision.files, key=lambda f: f.file_name):
                path = Path(f.file_path)
                if f.file_name.endswith(".gguf") and path.resolve() not in seen and path.is_file():
                    seen.add(path.resolve())
                    out.append(LibraryEntry(path.stem, path, f"hf:{repo.repo_id}"))
    return out


def looks_like_path(ref: str) -> bool:
    return ref.endswith(".gguf") or "/" in ref or "\\" in ref or ref.startswith(".")


def resolve_model(ref: str | None, model_dirs: Iterable[Path]) -> Path:
    """Turn a model reference into a file path, or raise a one-line error."""
    if not ref:
        bundled = find_bundled_model()
        if bundled is None:
            raise CatteryError(missing_model_message())
        return bundled
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise ModelFileError(
            f"{ref}: is a folder, not a GGUF file (a Hugging Face checkpoint? convert it with `cattery convert`)"
        )
    wanted = ref.lower()
    matches = [e for e in library_entries(model_dirs) if e.name.lower() == wanted]
    if len(matches) == 1:
        return matches[0].path
    if len(matches) > 1:
        where = ", ".join(str(m.path) for m in matches)
        raise ModelFileError(f"{ref}: several models have this name ({where}); pass a path")
    if looks_like_path(ref):
        raise ModelFileError(f"{ref}: model file not found")
    raise ModelFileError(f"{ref}: no such file and no model of that name in the library (`cattery models list`)")
