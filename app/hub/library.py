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
    """GGUF models in the standard Hugging Face cache (downloaded by Cattery or any other tool),
    named `owner/repo:QUANT` (or `owner/repo:file` where a repo has two of one quant type).

    Imports huggingface_hub, so callers that must start fast only use it for names with a `/`.
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound, CorruptedCacheException

    from app.hub.names import RemoteFile, group_gguf, unique_quants

    try:
        info = scan_cache_dir()
    except (CacheNotFound, CorruptedCacheException, OSError):
        return []
    out: list[LibraryEntry] = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model":
            continue
        paths: dict[str, Path] = {}
        for revision in sorted(repo.revisions, key=lambda r: r.last_modified):
            for f in revision.files:
                if f.file_name.endswith(".gguf") and Path(f.file_path).is_file():
                    rel = str(Path(f.file_path).relative_to(revision.snapshot_path))
                    paths[rel] = Path(f.file_path)  # the newest revision's copy wins
        files = [RemoteFile(rel, p.stat().st_size) for rel, p in paths.items()]
        models = [m for m in group_gguf(files) if m.complete]
        unique = unique_quants(models)
        for m in models:
            out.append(
                LibraryEntry(m.label(repo.repo_id, m.quant in unique), paths[m.first.path], f"hf:{repo.repo_id}")
            )
    return out


def looks_like_path(ref: str) -> bool:
    return ref.endswith(".gguf") or "/" in ref or "\\" in ref or ref.startswith(".")


def resolve_hub_name(ref: str) -> Path | None:
    """A model in the HF cache by `owner/repo[:QUANT|:file]`; None if `ref` is not such a name.

    Raises a one-line error when it is one but the model is not downloaded.
    """
    from app.hub.names import parse_ref

    hub = parse_ref(ref)
    if hub is None:
        return None
    entries = [e for e in hf_cache_entries() if e.source == f"hf:{hub.repo}"]
    if hub.selector:
        wanted = hub.selector.lower().removesuffix(".gguf")
        hits = [
            e
            for e in entries
            if e.name.lower() == f"{hub.repo}:{wanted}".lower()
            or e.path.stem.lower() == wanted
            or e.path.name.lower() == hub.selector.lower()
        ]
        if not hits:
            from app.hub.names import quant_of

            hits = [e for e in entries if quant_of(e.path.name) == hub.selector.upper()]
    else:
        hits = entries
    if len(hits) == 1:
        return hits[0].path
    if len(hits) > 1:
        raise ModelFileError(f"{ref}: {len(hits)} models of that repo are downloaded; name one ({hits[0].name}, …)")
    raise ModelFileError(f"{ref}: not downloaded yet: `cattery models download {ref}`")


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
    if "/" in ref and not ref.endswith(".gguf") and not ref.startswith((".", "/", "~")):
        found = resolve_hub_name(ref)
        if found is not None:
            return found
    if looks_like_path(ref):
        raise ModelFileError(f"{ref}: model file not found")
    raise ModelFileError(f"{ref}: no such file and no model of that name in the library (`cattery models list`)")


def model_files(path: Path) -> list[Path]:
    """The file, or every part of a split model given its first part."""
    from app.hub.names import SPLIT_RE

    m = SPLIT_RE.match(path.name)
    if not m:
        return [path]
    return sorted(path.parent.glob(f"{m.group('stem')}-*-of-{m.group('count')}.gguf"))


def remove_model(path: Path) -> int:
    """Delete a model's files; in the HF cache, its snapshot links and the blobs no other snapshot
    uses. The bytes freed."""
    freed = 0
    for part in model_files(path):
        target = part.resolve()
        if part.is_symlink():  # the HF cache: snapshots/<commit>/<file> -> ../../blobs/<hash>
            part.unlink()
            repo_root = target.parent.parent
            still_used = any(p.is_symlink() and p.resolve() == target for p in (repo_root / "snapshots").rglob("*"))
            if not still_used and target.is_file():
                freed += target.stat().st_size
                target.unlink()
        elif part.is_file():
            freed += part.stat().st_size
            part.unlink()
    return freed
