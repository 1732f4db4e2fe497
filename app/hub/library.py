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


# A model folder is walked this deep and this far, no further: `dirs = ["/"]` or a folder
# with a million files must not make every command that resolves a model crawl the disk.
MAX_WALK_DEPTH = 6
MAX_WALK_ENTRIES = 50_000


def _gguf_files(folder: Path) -> Iterator[Path]:
    """The `.gguf` files under `folder` (links to folders not followed), within the walk's bounds."""
    import os

    if not folder.is_dir():
        return
    found: list[Path] = []
    seen = 0
    pending = [(str(folder), 0)]
    while pending and seen < MAX_WALK_ENTRIES:
        top, depth = pending.pop()
        try:
            with os.scandir(top) as it:
                for entry in it:
                    seen += 1
                    if seen > MAX_WALK_ENTRIES:
                        break
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if depth < MAX_WALK_DEPTH:
                                pending.append((entry.path, depth + 1))
                        elif entry.name.endswith(".gguf") and entry.is_file():
                            found.append(Path(entry.path))
                    except OSError:
                        continue
        except OSError:  # unreadable, vanished: not a model folder we can use
            continue
    yield from sorted(found)


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
    """The file, or every part of a split model given one of its parts.

    The parts are found by comparing names, not by a glob: a name from the hub may hold `[`,
    `*` or `?`, and a glob made from it could match (and `remove_model` delete) other files.
    """
    from app.hub.names import SPLIT_RE

    m = SPLIT_RE.match(path.name)
    if not m:
        return [path]
    stem, count = m.group("stem"), m.group("count")
    parts = []
    for p in path.parent.iterdir():
        found = SPLIT_RE.match(p.name)
        if found and found.group("stem") == stem and found.group("count") == count:
            parts.append(p)
    return sorted(parts)


def _cache_blob(link: Path, target: Path) -> bool:
    """Whether `link` is a snapshot link of the HF cache and `target` a blob of the same repo:
    only then is the target Cattery's to delete. A link a person made in a models folder
    points at their own file, which stays."""
    blobs = target.parent
    snapshots = blobs.parent / "snapshots"
    return blobs.name == "blobs" and snapshots.is_dir() and link.parent.resolve().is_relative_to(snapshots.resolve())


def _require_gguf(path: Path) -> None:
    """`models rm` takes a path too: it deletes models, never whatever file a path names."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if magic != b"GGUF":
        raise ModelFileError(f"{path}: not a GGUF file; `cattery models rm` deletes only models")


def remove_model(path: Path) -> int:
    """Delete a model's files; in the HF cache, its snapshot links and the blobs no other snapshot
    uses. The bytes freed."""
    parts = model_files(path)
    for part in parts:
        _require_gguf(part)
    freed = 0
    for part in parts:
        target = part.resolve()
        if part.is_symlink():  # the HF cache: snapshots/<commit>/<file> -> ../../blobs/<hash>
            ours = _cache_blob(part, target)
            part.unlink()
            if not ours:
                continue
            snapshots = target.parent.parent / "snapshots"
            still_used = any(p.is_symlink() and p.resolve() == target for p in snapshots.rglob("*"))
            if not still_used and target.is_file():
                freed += target.stat().st_size
                target.unlink()
        elif part.is_file():
            freed += part.stat().st_size
            part.unlink()
    return freed
