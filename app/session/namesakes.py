"""Two characters of one name told apart.

Card sites are full of namesakes: three "Seraphina"s from three creators, a card and
its v2, the bundled Mochi beside an imported one. Wherever characters are listed, a
name shared by several cards gets what tells them apart beside it, in the order a
person recognises a card by: its creator, then its version, then its folder in the
library (which is unique). A name nobody else has stays as it is.

Reading every card to know their creators costs a moment for a big library, so
`LibraryNames` keeps the answer until the library folder changes (its listing and
modification time, a few µs to check).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.cards.card import Card
    from app.cards.library import CardLibrary
    from app.session.characters import CharacterEntry


@dataclass(frozen=True)
class Namesake:
    """What a card is known by, besides its name."""

    ref: str
    name: str
    creator: str = ""
    version: str = ""
    folder: str = ""  # the library folder, or "bundled" / the file's name

    @classmethod
    def of(cls, entry: CharacterEntry, card: Card | None) -> Namesake:
        data = card.data if card is not None else {}
        kind, _, rest = entry.ref.partition(":")
        folder = {"library": rest, "bundled": "bundled"}.get(kind, entry.path.name)
        return cls(
            entry.ref,
            entry.name,
            _text(data.get("creator")),
            _text(data.get("character_version")),
            folder,
        )


def _text(value: object) -> str:
    return " ".join(str(value).split())[:40] if isinstance(value, str | int | float) and str(value).strip() else ""


def _key(name: str) -> str:
    return " ".join(name.split()).casefold()


def _version(v: str) -> str:
    return v if v[:1].lower() == "v" else f"v{v}"


def marks(people: Iterable[Namesake]) -> dict[str, str]:
    """What tells each card from the others of its name ("by Alice", "v2", its folder); only cards
    that share their name are in it.

    Of the creator, the version and the folder, the first that differs for every card of
    the name is used; where none does alone, the creator and version go with the folder.
    """
    groups: dict[str, list[Namesake]] = {}
    for p in people:
        groups.setdefault(_key(p.name), []).append(p)
    out: dict[str, str] = {}
    ways = (
        lambda p: f"by {p.creator}" if p.creator else "",
        lambda p: _version(p.version) if p.version else "",
        lambda p: p.folder,
    )
    for group in groups.values():
        if len({p.ref for p in group}) < 2:
            continue
        for way in ways:
            found = [way(p) for p in group]
            if all(found) and len(set(found)) == len(found):
                break
        else:
            found = [", ".join(m for m in (ways[0](p), ways[1](p), p.folder) if m) for p in group]
        out.update((p.ref, mark) for p, mark in zip(group, found, strict=True))
    return out


def tell_apart(people: Iterable[Namesake]) -> dict[str, str]:
    """Each card's name as a list shows it: `Seraphina (by Alice)` where another card is called Seraphina."""
    people = list(people)
    found = marks(people)
    return {p.ref: f"{p.name} ({found[p.ref]})" if p.ref in found else p.name for p in people}


def library_signature(root: os.PathLike[str] | str) -> tuple[int, tuple[str, ...]] | None:
    """The library folder as last changed: a card added, replaced or removed changes it (cards are
    written to a temporary folder and renamed into place). None when the folder is not there."""
    try:
        stat = os.stat(root)
        with os.scandir(root) as it:
            names = tuple(sorted(e.name for e in it if not e.name.startswith(".")))
    except OSError:
        return None
    return stat.st_mtime_ns, names


class LibraryNames:
    """Every character's name as lists show it, worked out again only when the library folder changed,
    and then reading only the cards that changed (a card's card.json is replaced, never edited)."""

    def __init__(self, library: CardLibrary) -> None:
        self.library = library
        self._lock = threading.Lock()
        self._seen: tuple[int, tuple[str, ...]] | None = None
        self._labels: dict[str, str] = {}
        self._marks: dict[str, str] = {}
        self._cards: dict[str, tuple[int, Namesake]] = {}  # folder → (card.json's mtime, what it says)
        self._bundled: list[Namesake] | None = None

    def labels(self) -> dict[str, str]:
        """ref → shown name for the library's and the bundled cards."""
        signature = library_signature(self.library.root)
        with self._lock:
            if signature is not None and signature == self._seen:
                return self._labels
            people = [*self._library_people(), *self._bundled_people()]
            self._seen, self._labels, self._marks = signature, tell_apart(people), marks(people)
            return self._labels

    def _library_people(self) -> list[Namesake]:
        from app.cards.errors import CardError
        from app.session.characters import CharacterEntry

        out, cards = [], {}
        try:
            entries = self.library.entries()
        except OSError:  # a library folder that cannot be read lists no cards (the Characters screen says why)
            entries = []
        for entry in entries:
            try:
                mtime = (entry.folder / "card.json").stat().st_mtime_ns
            except OSError:
                continue
            known = self._cards.get(entry.slug)
            if known is None or known[0] != mtime:
                ref = f"library:{entry.slug}"
                try:
                    card = entry.load()
                    known = (mtime, Namesake.of(CharacterEntry(ref, card.name, "library", entry.folder), card))
                except (CardError, OSError):  # listed under its folder's name, as the Characters screen does
                    known = (mtime, Namesake(ref, entry.slug, folder=entry.slug))
            cards[entry.slug] = known
            out.append(known[1])
        self._cards = cards
        return out

    def _bundled_people(self) -> list[Namesake]:
        from app.cards.errors import CardError
        from app.session.characters import bundled_entries

        if self._bundled is None:
            people = []
            for entry in bundled_entries():
                try:
                    card = entry.load()
                except (CardError, OSError):
                    card = None
                people.append(Namesake.of(entry, card))
            self._bundled = people
        return self._bundled

    def label(self, ref: str | None, name: str) -> str:
        """A chat's character as lists show it; a card no longer in the library keeps its stored name."""
        if ref is None:
            return name
        return self.labels().get(ref, name)

    def mark(self, ref: str | None) -> str:
        """What tells this card from another of its name ("by Alice"), or "" when no other card has it."""
        self.labels()
        with self._lock:
            return self._marks.get(ref or "", "")


_registry: dict[str, LibraryNames] = {}
_registry_lock = threading.Lock()


def library_names(library: CardLibrary) -> LibraryNames:
    """The one `LibraryNames` of a library folder in this process (screens and the chat title share it)."""
    key = os.fspath(library.root)
    with _registry_lock:
        names = _registry.get(key)
        if names is None:
            names = _registry[key] = LibraryNames(library)
        return names
