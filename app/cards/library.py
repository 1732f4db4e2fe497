"""The character library: one folder per card in the data dir.

A card is stored as its V3 JSON (every key kept), a small `meta.json` (what it was
imported from, and top-level keys other apps wrote beside the spec), its avatar
exactly as it came, and any other CharX assets. Each card folder is written under
a temporary name and renamed into place, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from app.cards.card import Card, normalise_data
from app.cards.errors import CardError
from app.errors import CatteryError


def slug(name: str) -> str:
    return re.sub(r"[^\w-]+", "-", name.strip().lower(), flags=re.UNICODE).strip("-_") or "card"


@dataclass(frozen=True)
class Entry:
    slug: str
    folder: Path

    def load(self) -> Card:
        return load_card(self.folder)


def load_card(folder: Path) -> Card:
    source = str(folder)
    try:
        v3 = json.loads((folder / "card.json").read_text(encoding="utf-8"))
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CardError(source, f"the library copy is damaged ({exc})") from None
    avatar_path = folder / "avatar"
    files_dir = folder / "files"
    files = {}
    if files_dir.is_dir():
        files = {p.relative_to(files_dir).as_posix(): p.read_bytes() for p in files_dir.rglob("*") if p.is_file()}
    return Card(
        normalise_data(v3.get("data"), source),
        meta.get("spec", "chara_card_v3"),
        meta.get("top", {}),
        avatar_path.read_bytes() if avatar_path.is_file() else None,
        files,
    )


class CardLibrary:
    def __init__(self, root: Path) -> None:
        self.root = root

    def entries(self) -> list[Entry]:
        if not self.root.is_dir():
            return []
        return [Entry(p.name, p) for p in sorted(self.root.iterdir()) if (p / "card.json").is_file()]

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
        raise CatteryError(f"{ref}: no such card in the library (`cattery cards list`)")

    def add(self, card: Card, source: str = "") -> Entry:
        self.root.mkdir(parents=True, exist_ok=True)
        base = slug(card.name)
        name, n = base, 1
        while (self.root / name).exists():
            n += 1
            name = f"{base}-{n}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))
        try:
            (tmp / "card.json").write_text(json.dumps(card.to_v3(), ensure_ascii=False, indent=2), encoding="utf-8")
            meta = {"spec": card.spec, "top": card.top, "imported_from": source, "imported_at": int(time.time())}
            (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")
            if card.avatar is not None:
                (tmp / "avatar").write_bytes(card.avatar)
            for path, data in card.files.items():
                target = tmp / "files" / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            tmp.rename(self.root / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Entry(name, self.root / name)

    def remove(self, ref: str) -> Entry:
        entry = self.find(ref)
        trash = entry.folder.with_name(f".{entry.slug}.removing")
        entry.folder.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        return entry
