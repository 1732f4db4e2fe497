"""Which characters exist and how a chat names its character.

A chat stores a stable reference to its card, so that reopening it, days later,
finds the same character: `bundled:mochi` for a card shipped in `assets/cards/`,
`library:<folder>` for a card in the library, `file:<absolute path>` for a card
file given on the command line. What a user types (`--card Seraphina`, a path, a
bundled name) is resolved to one of these.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from app.cards.card import Card
from app.cards.errors import CardError
from app.cards.library import CardLibrary
from app.errors import CatteryError

NONE_REFS = ("", "none")


@dataclass(frozen=True)
class CharacterEntry:
    """A character the user can pick: the card is read only when asked for."""

    ref: str
    name: str
    source: str  # "bundled", "library" or "file"
    path: Path

    def load(self) -> Card:
        return load_ref(self.ref, self.path)


def _bundled_dir() -> Path:
    from app.assets import asset_path

    return asset_path("cards")


def read_bundled(path: Path) -> Card:
    """A bundled card; its picture is the PNG of the same name beside it (the JSON has none)."""
    from app.cards.read import read_card

    card = read_card(path)
    picture = path.with_suffix(".png")
    if card.avatar is None and picture.is_file():
        card.avatar = picture.read_bytes()
    return card


def bundled_entries() -> list[CharacterEntry]:
    from app.cards.read import read_card

    out = []
    for path in sorted(_bundled_dir().glob("*.json")):
        with contextlib.suppress(CardError):
            out.append(CharacterEntry(f"bundled:{path.stem}", read_card(path).name, "bundled", path))
    return out


def library_entries(library: CardLibrary) -> list[CharacterEntry]:
    out = []
    for entry in library.entries():
        try:
            name = entry.load().name
        except CardError:
            name = entry.slug  # shown, so the user can remove it; loading it says what is wrong
        out.append(CharacterEntry(f"library:{entry.slug}", name, "library", entry.folder))
    return out


def all_characters(library: CardLibrary) -> list[CharacterEntry]:
    """The library's cards first (the user's own), then the bundled ones."""
    return [*library_entries(library), *bundled_entries()]


def load_ref(ref: str, path: Path | None = None) -> Card:
    from app.cards.library import load_card
    from app.cards.read import read_card

    kind, _, rest = ref.partition(":")
    if kind == "library":
        return load_card(path or Path(rest))
    if kind == "bundled":
        return read_bundled(path or _bundled_dir() / f"{rest}.json")
    if kind == "file":
        return read_card(Path(rest))
    raise CatteryError(f"{ref}: not a character reference")


def _one_folder_name(text: str) -> bool:
    return bool(text) and text not in (".", "..") and "/" not in text and "\\" not in text and "\0" not in text


def resolve_character(ref: str | None, library: CardLibrary) -> tuple[str | None, Card | None]:
    """(stable reference, card) for what a user typed or a chat stored; (None, None) for no character."""
    from app.cards.read import read_card

    if ref is None or ref.strip().lower() in NONE_REFS:
        return None, None
    kind, _, rest = ref.partition(":")
    if kind in ("bundled", "library") and not _one_folder_name(rest):
        # A chat's stored reference names one folder or file of ours; anything else (an
        # imported or tampered database) must not lead outside the cards folder.
        raise CatteryError(f"{ref[:80]!r}: not a character reference")
    if kind == "bundled":
        return ref, load_ref(ref)
    if kind == "library":
        folder = library.root / rest
        if not (folder / "card.json").is_file():
            raise CatteryError(f"{rest}: this chat's character is no longer in the library")
        return ref, load_ref(ref, folder)
    if kind == "file" and rest:
        path = Path(rest)
        if not path.is_file():
            raise CatteryError(f"{rest}: this chat's card file is gone")
        return ref, read_card(path)
    path = Path(ref).expanduser()
    try:
        is_file = path.is_file()
    except (OSError, ValueError):  # too long to be a path, or a NUL in it: a name, then
        is_file = False
    if is_file:
        return f"file:{path.resolve()}", read_card(path)
    with contextlib.suppress(CatteryError):
        entry = library.find(ref)
        return f"library:{entry.slug}", entry.load()
    wanted = ref.strip().lower()
    for entry in bundled_entries():
        if wanted in (entry.path.stem, entry.name.lower()):
            return entry.ref, entry.load()
    shown = ref if len(ref) <= 120 else ref[:117] + "…"
    raise CatteryError(f"{shown}: no such card (not a file, not in the library, not a bundled card)")
