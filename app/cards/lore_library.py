"""The library of lorebooks: World Info files imported into the data dir, to attach by name.

A book is imported as the file it was (SillyTavern World Info, a V3 lorebook or a
`character_book` object), after it has been read the way every prompt reads it, so a
book in the library is one every prompt can use. Its file name comes from the book's
name (sanitised as a card's folder is); importing the same book again (same content,
whatever its name: `Lorebook.digest`) finds the copy already there.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from app.cards.errors import MAX_JSON_TEXT, CardError
from app.cards.library import _RESERVED, SLUG_BYTES, SLUG_CHARS
from app.cards.lorebook import Lorebook, lorebook_from_bytes, read_lorebook
from app.cards.parse import read_file
from app.errors import CatteryError, disk_error

MAX_BOOKS = 2000  # files listed from the library folder; more is not a library a person keeps


@dataclass
class LibraryBook:
    name: str  # what it is attached by
    path: Path
    book: Lorebook | None  # None: the file cannot be read any more
    problem: str | None = None

    @property
    def title(self) -> str:
        return (self.book.name if self.book is not None else "") or self.name

    @property
    def entries(self) -> int:
        return len(self.book.entries) if self.book is not None else 0


def file_stem(name: str) -> str:
    """A book's file name in the library from its name: letters, digits, dashes and underscores,
    its case kept (the name is what the person sees and types), never empty or reserved."""
    text = unicodedata.normalize("NFC", name).strip()
    out = re.sub(r"[^\w-]+", "-", text, flags=re.UNICODE).strip("-_")[:SLUG_CHARS]
    while len(out.encode("utf-8", "surrogatepass")) > SLUG_BYTES:
        out = out[:-1]
    out = out.strip("-_") or "lorebook"
    return f"{out}-book" if out.lower() in _RESERVED else out


class LoreLibrary:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, name: str) -> Path | None:
        """The library file of a book name, in any case (None when there is no such book)."""
        stem = name.removesuffix(".json")
        if not stem or stem != file_stem(stem):  # only the library's own names: never a way out of its folder
            return None
        path = self.folder / f"{stem}.json"
        if path.is_file():
            return path
        if self.folder.is_dir():
            for found in sorted(self.folder.glob("*.json"))[:MAX_BOOKS]:
                if found.stem.casefold() == stem.casefold() and found.is_file():
                    return found
        return None

    def books(self) -> list[LibraryBook]:
        if not self.folder.is_dir():
            return []
        out = []
        for path in sorted(self.folder.glob("*.json"))[:MAX_BOOKS]:
            if path.name.startswith("."):
                continue
            out.append(self.load(path.stem))
        return out

    def load(self, name: str) -> LibraryBook:
        path = self.folder / f"{name}.json"
        try:
            return LibraryBook(name, path, read_lorebook(path))
        except CatteryError as exc:
            return LibraryBook(name, path, None, str(exc))

    def add(self, source: Path) -> tuple[LibraryBook, bool]:
        """Import a lorebook file: (the library's book, whether it was new)."""
        data = read_file(source, str(source), MAX_JSON_TEXT, "a lorebook")
        book = lorebook_from_bytes(data, str(source), source.stem)  # refused in one line if it is not one
        for known in self.books():
            if known.book is not None and known.book.digest == book.digest:
                return known, False
        base = file_stem(book.name or source.stem)
        name = base
        n = 2
        while (self.folder / f"{name}.json").exists():
            name = f"{base}-{n}"
            n += 1
        from app.atomic import write_bytes_atomic

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(self.folder / f"{name}.json", data)
        except OSError as exc:
            raise disk_error(exc, "keep the lorebook") from None
        return LibraryBook(name, self.folder / f"{name}.json", book), True

    def remove(self, name: str) -> Path:
        path = self.path(name)
        if path is None:
            raise CatteryError(f"{name}: no such lorebook in the library (`cattery lore list`)")
        try:
            os.unlink(path)
        except OSError as exc:
            raise disk_error(exc, "remove the lorebook") from None
        return path

    def resolve(self, ref: str) -> Path:
        """A lorebook reference: a file (absolute, or relative to the current folder), else a library name."""
        path = Path(ref).expanduser()
        if path.is_file():
            return path.resolve()
        found = self.path(ref)
        if found is not None:
            return found
        if path.exists():
            raise CardError(str(path), "not a regular file")
        raise CatteryError(f"{ref}: no such lorebook file or library book (`cattery lore list`)")
