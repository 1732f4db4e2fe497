"""The character library: one folder per card in the data dir.

A card is stored as its V3 JSON (every key kept), a small `meta.json` (what it was
imported from, and top-level keys other apps wrote beside the spec), its avatar
exactly as it came, and any other CharX assets. Each card folder is written under
a temporary name and renamed into place, so a failed import leaves nothing behind.

A card's name is a stranger's text: its folder name is derived from it (`slug`) with
a length cap in characters and bytes, word characters only, never empty, never a name
Windows reserves, while the name itself is kept as written. The library's own files
are read back with the same bounds as a card from outside, since anything may have
edited them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from app.cards.card import Card, normalise_data
from app.cards.errors import MAX_CARD_FILE, MAX_CHARX_ENTRIES, MAX_CHARX_TOTAL, MAX_JSON_TEXT, CardError
from app.cards.parse import load_json
from app.errors import CatteryError, disk_error

SLUG_CHARS = 48  # a folder name: short enough to type, and with "-NN" and a temporary prefix
SLUG_BYTES = 120  # far below the 255 bytes of a file name
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
# The library copy is JSON written by us without indentation: at most as large as the
# card's own JSON, give or take the numbers written out again ("1e5" is "100000.0").
MAX_LIBRARY_JSON = 2 * MAX_JSON_TEXT
SPECS = ("chara_card_v3", "chara_card_v2", "v1", "pygmalion", "tgwui")


def slug(name: str) -> str:
    text = unicodedata.normalize("NFC", name).strip().lower()
    out = re.sub(r"[^\w-]+", "-", text, flags=re.UNICODE).strip("-_")[:SLUG_CHARS]
    while len(out.encode("utf-8", "surrogatepass")) > SLUG_BYTES:
        out = out[:-1]
    out = out.strip("-_") or "card"
    return f"{out}-card" if out in _RESERVED else out


@dataclass(frozen=True)
class Entry:
    slug: str
    folder: Path

    def load(self) -> Card:
        return load_card(self.folder)


def _read(path: Path, limit: int, source: str) -> bytes | None:
    """A regular file of the library copy (None when absent), refusing links, devices and giants.

    Opened without following a link (`O_NOFOLLOW`) and measured through the open descriptor,
    so nothing can be swapped in between the check and the read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a link
        if path.is_symlink():
            raise CardError(source, f"the library copy is damaged ({path.name} is not a plain file)") from None
        raise CardError(source, f"the library copy cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CardError(source, f"the library copy is damaged ({path.name} is not a plain file)")
        if info.st_size > limit:
            raise CardError(source, f"the library copy is damaged ({path.name} is {info.st_size:,} bytes)")
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise CardError(source, f"the library copy cannot be read ({exc.strerror})") from None
    if len(data) > limit:  # it grew while read
        raise CardError(source, f"the library copy is damaged ({path.name} is over {limit:,} bytes)")
    return data


def _files(folder: Path, source: str) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    total = 0
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            if len(files) >= MAX_CHARX_ENTRIES:
                raise CardError(source, f"the library copy is damaged (more than {MAX_CHARX_ENTRIES} files)")
            data = _read(path, MAX_CHARX_TOTAL - total, source)
            if data is not None:
                total += len(data)
                files[path.relative_to(folder).as_posix()] = data
    return files


def load_card(folder: Path) -> Card:
    source = str(folder)
    raw_card = _read(folder / "card.json", MAX_LIBRARY_JSON, source)
    raw_meta = _read(folder / "meta.json", MAX_LIBRARY_JSON, source)
    if raw_card is None or raw_meta is None:
        raise CardError(source, "the library copy is damaged (card.json or meta.json is missing)")
    v3 = load_json(raw_card, source, "the library copy's card.json", limit=MAX_LIBRARY_JSON)
    meta = load_json(raw_meta, source, "the library copy's meta.json", limit=MAX_LIBRARY_JSON)
    if not isinstance(v3, dict) or not isinstance(meta, dict):
        raise CardError(source, "the library copy is damaged (card.json or meta.json is not an object)")
    spec = meta.get("spec") if meta.get("spec") in SPECS else "chara_card_v3"
    top = meta.get("top") if isinstance(meta.get("top"), dict) else {}
    files_dir = folder / "files"
    files = _files(files_dir, source) if files_dir.is_dir() and not files_dir.is_symlink() else {}
    avatar = _read(folder / "avatar", MAX_CARD_FILE, source)
    return Card(normalise_data(v3.get("data"), source), spec, top, avatar, files)


def _library_path(path: str, source: str) -> str:
    from app.cards.read import member_problem

    problem = member_problem(path)
    if problem:
        raise CardError(source, f"the asset {path[:120]!r} cannot be saved ({problem})")
    return path


def _compact(obj: object) -> bytes:
    """JSON without indentation: indenting a deeply nested stranger's structure multiplies its size."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class CardLibrary:
    def __init__(self, root: Path) -> None:
        self.root = root

    def entries(self) -> list[Entry]:
        if not self.root.is_dir():
            return []
        return [
            Entry(p.name, p)
            for p in sorted(self.root.iterdir())
            if not p.name.startswith(".") and (p / "card.json").is_file()
        ]

    def find(self, ref: str) -> Entry:
        """A card by its folder name or its name (case-insensitive)."""
        wanted = ref.strip().lower()
        entries = self.entries()
        for e in entries:
            if e.slug == wanted or e.slug == slug(ref):
                return e
        for e in entries:
            with contextlib.suppress(CardError):
                if e.load().name.lower() == wanted:
                    return e
        raise CatteryError(f"{ref[:200]}: no such card in the library (`cattery cards list`)")

    def add(self, card: Card, source: str = "") -> Entry:
        """Save `card` as a new folder; nothing is left behind when it cannot be."""
        meta = {"spec": card.spec, "top": card.top, "imported_from": source, "imported_at": int(time.time())}
        text, meta_text = _compact(card.to_v3()), _compact(meta)
        if max(len(text), len(meta_text)) > MAX_LIBRARY_JSON:
            raise CardError(source or card.name, f"the card is larger than the {MAX_LIBRARY_JSON // 2**20} MiB allowed")
        files = {_library_path(path, source or card.name): data for path, data in card.files.items()}
        try:
            return self._write(slug(card.name), text, meta_text, card.avatar, files)
        except OSError as exc:
            raise disk_error(exc, "save the card") from None

    def _write(self, base: str, text: bytes, meta: bytes, avatar: bytes | None, files: dict[str, bytes]) -> Entry:
        self.root.mkdir(parents=True, exist_ok=True)
        name, n = base, 1
        while (self.root / name).exists():
            n += 1
            name = f"{base}-{n}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))
        try:
            (tmp / "card.json").write_bytes(text)
            (tmp / "meta.json").write_bytes(meta)
            if avatar is not None:
                (tmp / "avatar").write_bytes(avatar)
            for path, data in files.items():
                target = tmp / "files" / path
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("xb") as f:  # never through a link, never over another file
                    f.write(data)
            tmp.rename(self.root / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Entry(name, self.root / name)

    def remove(self, ref: str) -> Entry:
        entry = self.find(ref)
        try:
            trash = Path(tempfile.mkdtemp(prefix=f".{entry.slug}.removing.", dir=self.root))
            entry.folder.rename(trash / "card")
        except OSError as exc:
            raise disk_error(exc, "remove the card") from None
        shutil.rmtree(trash, ignore_errors=True)
        return entry
