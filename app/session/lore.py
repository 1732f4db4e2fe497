"""World Info for a chat: which lorebooks it uses and from where, and what goes into its prompt
besides the stored messages (lore entries and the Author's Note).

A chat's books come from five places: the card's own book, books attached to the
character, books attached to the chat, books attached everywhere (`[chat] lorebooks`
in the settings) and `--lorebook` on the command line. The same book from two places
is one book (`Lorebook.digest`), listed once with every place it came from, and an
entry two books share goes into the prompt once.

A book a chat or character names that cannot be read any more (a file moved, a library
book removed) leaves the chat usable: it is skipped, with a warning that says which.
A book named on the command line is the user's request of the moment: an error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from app.cards.lorebook import Activation, Lorebook
from app.cards.macros import expand
from app.cards.prompting import CardPrompt, LoreSession
from app.errors import CatteryError
from app.prompt.inject import Dynamic, Injection
from app.prompt.segments import Message
from app.session.authors_note import AuthorsNote

if TYPE_CHECKING:
    from app.cards.card import Card
    from app.cards.lore_library import LibraryBook
    from app.session.workspace import Workspace

SCOPES = ("card", "character", "chat", "global", "command line")
SCOPE_NAMES = {
    "card": "the card's own",
    "character": "this character",
    "chat": "this chat",
    "global": "every chat",
    "command line": "the command line",
}


@dataclass
class AttachedBook:
    """One book a chat uses, with every place it was attached (a book attached twice is one)."""

    book: Lorebook
    refs: dict[str, str] = field(default_factory=dict)  # scope → the reference stored there ("" for the card's)

    @property
    def scopes(self) -> list[str]:
        return [s for s in SCOPES if s in self.refs]

    def where(self) -> str:
        return ", ".join(SCOPE_NAMES[s] for s in self.scopes)


@dataclass
class ChatLore:
    books: list[AttachedBook] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    broken: list[tuple[str, str, str]] = field(default_factory=list)  # (scope, reference, why) of books skipped

    def add(self, book: Lorebook, scope: str, ref: str) -> None:
        for known in self.books:
            if known.book.digest == book.digest:
                known.refs.setdefault(scope, ref)
                return
        self.books.append(AttachedBook(book, {scope: ref}))

    @property
    def lorebooks(self) -> list[Lorebook]:
        return [a.book for a in self.books]


def gather_lore(
    resolve: Callable[[str, str], Path],
    *,
    card: Card | None,
    character: Sequence[str] = (),
    chat: Sequence[str] = (),
    everywhere: Sequence[str] = (),
    command_line: Sequence[str] = (),
) -> ChatLore:
    """Every book of a chat, each once, in the order above (the card's first)."""
    from app.cards.lorebook import book_from_spec, read_lorebook

    lore = ChatLore()
    if card is not None and isinstance(card.data.get("character_book"), dict):
        lore.add(book_from_spec(card.data["character_book"], card.name), "card", "")
    for scope, refs in (("character", character), ("chat", chat), ("global", everywhere)):
        for ref in refs:
            try:
                lore.add(read_lorebook(resolve(ref, scope)), scope, ref)
            except CatteryError as exc:
                lore.warnings.append(f"the lorebook {ref} attached to {SCOPE_NAMES[scope]} is skipped: {exc}")
                lore.broken.append((scope, ref, str(exc)))
    for ref in command_line:
        lore.add(read_lorebook(resolve(ref, "command line")), "command line", ref)
    return lore


class ChatExtras:
    """A chat prompt's dynamic part (`PromptExtras`, PromptBuilder.dynamic): lore entries and the Author's Note.

    The note and the entries a book places around it go in as one message at the note's
    depth, when the note is due; entries placed at a depth of their own go in as messages
    there. `active` (the entries the last build switched on, or None without lorebooks)
    and `note_due` tell the line chat's `/lore`, the app and `cattery prompt --json` what
    happened.
    """

    def __init__(self, card: CardPrompt, lore: LoreSession | None, note: AuthorsNote | None) -> None:
        self.card = card
        self.lore = lore
        self.note = note
        self.note_due = False

    @property
    def active(self) -> list[Activation] | None:
        return self.lore.active if self.lore is not None else None

    def __call__(self, history: Sequence[Message]) -> Dynamic:
        """Where several go in at one depth and role they are one message, in SillyTavern's order:
        the Author's Note, the card's Character's Note, then lore entries."""
        out = Dynamic(keep_system=True)
        around_note: tuple[list[str], list[str]] = ([], [])
        lore: list[Injection] = []
        if self.lore is not None:
            out.system, out.late = self.lore(history)
            out.keep_system = False
            lore = [Injection(a.entry.insert_depth, a.entry.role, text, "lore") for a, text in self.lore.at_depth]
            around_note = (self.lore.before_note, self.lore.after_note)
        note = self.note or AuthorsNote()  # lore placed around the note goes where a note would be
        self.note_due = note.due(history) and (note.active or any(around_note))
        if self.note_due:
            body = expand(note.text, self.card.context).strip() if note.text.strip() else ""
            text = "\n".join(t for t in [*around_note[0], body, *around_note[1]] if t)
            if text:
                out.injections.append(note.injection(text))
        if self.card.depth_prompt is not None:  # the card's own Character's Note: every turn, at its depth
            text, depth, role = self.card.depth_prompt
            body = expand(text, self.card.context).strip()
            if body:
                out.injections.append(Injection(depth, role, body, "character_note"))
        out.injections += lore
        return out


def lore_report(active: Sequence[Activation] | None) -> list[dict[str, str]]:
    """The active entries as `cattery prompt --json` and the app list them."""
    return [
        {"book": a.book, "id": a.entry.uid, "name": a.entry.name, "why": a.why, "position": a.entry.position}
        for a in active or []
    ]


@dataclass
class BookRow:
    """One book as the World Info dialog lists it: a library book, or one the chat uses from elsewhere."""

    title: str
    entries: int
    ref: str | None  # what attaching it stores: a library name or an absolute path; None: the card's own
    refs: dict[str, str] = field(default_factory=dict)  # where it is attached now → what is stored there
    origin: str = ""  # "library", a path, "card"
    problem: str | None = None

    @property
    def scopes(self) -> set[str]:
        return set(self.refs)

    @property
    def key(self) -> str:
        """Which row this is from one listing to the next."""
        return self.ref if self.ref is not None else f"card:{self.title}"


def book_rows(lore: ChatLore, library: Sequence[LibraryBook]) -> list[BookRow]:
    """The chat's books (each once, with where it is attached), then the rest of the library.

    A book attached from a file that is also in the library is the library's row: attaching
    it elsewhere then stores the library name, which does not break when the file moves.
    """
    by_digest = {b.book.digest: b for b in library if b.book is not None}
    rows: list[BookRow] = []
    shown: set[str] = set()
    for attached in lore.books:
        known = by_digest.get(attached.book.digest)
        if known is not None:
            ref, origin = known.name, "library"
        elif "card" in attached.refs and len(attached.refs) == 1:
            ref, origin = None, "card"
        else:
            ref = next(r for s, r in attached.refs.items() if s != "card")
            origin = ref
        shown.add(attached.book.digest)
        rows.append(
            BookRow(
                attached.book.name or ref or "lorebook", len(attached.book.entries), ref, dict(attached.refs), origin
            )
        )
    for scope, ref, why in lore.broken:
        rows.append(BookRow(ref, 0, ref, {scope: ref}, ref, why))
    for b in library:
        if b.book is not None and b.book.digest in shown:
            continue
        rows.append(BookRow(b.title, b.entries, b.name, {}, "library", b.problem))
    return rows


def set_attached(
    ws: Workspace, row: BookRow, scope: str, attached: bool, *, chat_id: int | None, card_ref: str | None
) -> str | None:
    """Attach a book to this chat, this character or every chat (or detach it from there).

    Detaching removes what is stored there (which may be a path, for a book attached by
    file); attaching stores the row's reference. Returns a line to show when the settings
    file could not be saved (the chat database's failures raise, as everywhere).
    """
    if scope not in ("chat", "character", "global"):
        raise ValueError(scope)
    ref = row.refs.get(scope) if not attached else row.ref
    if ref is None:
        if attached:
            raise CatteryError(
                "the card's own lorebook is always on with its card; import the file to attach it elsewhere"
            )
        return None
    if scope == "global":
        return ws.set_global_lorebook(ref, attached)
    if scope == "character" and card_ref is None:
        raise CatteryError("this chat has no character to attach a lorebook to")
    if scope == "chat" and chat_id is None:
        raise CatteryError("no chat is open")
    target = {"chat_id": chat_id} if scope == "chat" else {"card_ref": card_ref}
    if attached:
        ws.store.attach_lorebook(ref, **target)
    else:
        ws.store.detach_lorebook(ref, **target)
    return None
