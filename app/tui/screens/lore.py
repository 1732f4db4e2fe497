"""World Info (F9): the open chat's lorebooks and the library's, where each is attached, and the
entries the next reply switches on, with why.

A book is attached to this chat, to this character (every chat with them) or to every
chat with one key each, and imported into the library from a file; nothing needs the
settings file. Reading books and working out the active entries runs in a thread worker
that posts what it found: a big book never holds the screen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Label, Static

from app.tui.guard import ENVIRONMENT, error_line, reported
from app.tui.keys import bindings
from app.tui.plain import cell, plain
from app.tui.screens.dialogs import AskScreen, ConfirmScreen
from app.tui.state import SharedState

if TYPE_CHECKING:
    from app.session.chat import ChatSession, LoreState
    from app.session.lore import BookRow

POSITION_NAMES = {
    "before_char": "before the character",
    "after_char": "after the character",
    "before_note": "before the Author's Note",
    "after_note": "after the Author's Note",
    "at_depth": "in the chat",
}
MARK = "✓"


class LoreLoaded(Message):
    """The worker read the books and worked out the next reply's entries (or could not: `error`)."""

    def __init__(
        self, rows: list[BookRow], state: LoreState | None, warnings: list[str], error: str | None = None
    ) -> None:
        super().__init__()
        self.rows = rows
        self.state = state
        self.warnings = warnings
        self.error = error


class LoreActive(Message):
    """The entries the next reply switches on, worked out after the books were shown: counting a
    book's budget needs the model's tokenizer, which waits while a reply is being written."""

    def __init__(self, state: LoreState, warnings: list[str]) -> None:
        super().__init__()
        self.state = state
        self.warnings = warnings


class LoreImported(Message):
    def __init__(self, line: str, name: str | None, *, error: bool = False) -> None:
        super().__init__()
        self.line = line
        self.name = name
        self.error = error


def where_text(placement: str, entry_position: str, depth: int, role: str) -> str:
    """Where an active entry's text goes, in words."""
    if entry_position == "at_depth":
        return f"in the chat, {depth} from the end, as {role}"
    if placement == "end" and entry_position in ("before_char", "after_char"):
        return "right before the reply"
    return POSITION_NAMES.get(entry_position, entry_position)


class WorldInfoScreen(SharedState, ModalScreen[None]):
    KEY_SECTION = "lore"
    BINDINGS: ClassVar[list[Binding]] = bindings("lore")

    def __init__(self) -> None:
        super().__init__(classes="dialog")
        self.rows: list[BookRow] = []
        self.select_key: str | None = None  # the row to show selected after the next load
        self.books_read = False  # the books are listed: they can be attached and detached
        self.loaded = False  # and the next reply's entries are known
        self._tell_chat = False  # a change made here reaches the chat's prompt once the recipe is in use

    @property
    def session(self) -> ChatSession | None:
        return self.shared.session

    def compose(self) -> ComposeResult:
        s = self.session
        who = s.char_name if s is not None and s.recipe.card is not None else "no character"
        title = f"World Info · {who} · {s.title}" if s is not None else "World Info"
        with Vertical(id="lore-dialog"):
            yield Label(plain(title), classes="dialog-title")
            books: DataTable[str] = DataTable(id="lore-books", cursor_type="row", zebra_stripes=True)
            yield books
            yield Static("", id="lore-book-info", classes="hint")
            yield Static("Active for the next reply", classes="pane-title")
            active: DataTable[str] = DataTable(id="lore-active", cursor_type="row", zebra_stripes=True)
            yield active
            yield Static("", id="lore-note", classes="hint")
            yield Static(
                "Space/Enter: this chat · c: this character · g: every chat · Ctrl+O imports a lorebook file · "
                "Delete removes it from the library · Esc closes",
                classes="hint",
            )
        yield Footer(compact=True, show_command_palette=False)  # Ctrl+P: F1 says so

    def on_mount(self) -> None:
        books = self.query_one("#lore-books", DataTable)
        for key, label in (
            ("book", "book"),
            ("entries", "entries"),
            ("chat", "this chat"),
            ("character", "character"),
            ("global", "every chat"),
            ("from", "from"),
        ):
            books.add_column(label, key=key)
        active = self.query_one("#lore-active", DataTable)
        for key, label in (("book", "book"), ("entry", "entry"), ("why", "why"), ("where", "goes")):
            active.add_column(label, key=key)
        books.focus()
        self.load()

    # -- reading -------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="lore", exit_on_error=False)
    def load(self) -> None:
        from app.session.chat import fresh_recipe
        from app.session.lore import book_rows

        s = self.session
        if s is None:
            self.post_message(LoreLoaded([], None, [], "no chat is open"))
            return
        ws = self.shared.ws
        try:
            recipe = fresh_recipe(ws, s, **self.cattery.session_overrides())
            lore = recipe.lore
            rows = book_rows(lore, ws.lore_library.books()) if lore is not None else []
        except ENVIRONMENT as exc:
            self.post_message(LoreLoaded([], None, [], error_line(exc)))
            return
        warnings = list(lore.warnings) if lore is not None else []
        self.post_message(LoreLoaded(rows, None, warnings))  # the books at once, even while a reply is written
        try:
            s.use_recipe(recipe)  # these wait for the model's tokenizer
            state = s.lore_now()
        except ENVIRONMENT as exc:
            self.post_message(LoreLoaded(rows, None, warnings, error_line(exc)))
            return
        self.post_message(LoreActive(state, warnings))

    def on_lore_loaded(self, event: LoreLoaded) -> None:
        self.books_read = True
        if event.error:
            self.loaded = True
            self.query_one("#lore-book-info", Static).update(plain(event.error))
            return
        self.rows = event.rows
        books = self.query_one("#lore-books", DataTable)
        keep = self.select_key or self._current_key()
        self.select_key = None
        books.clear()
        for row in event.rows:
            books.add_row(
                cell(row.title + (" (cannot be read)" if row.problem else "")),
                cell(str(row.entries) if not row.problem else "–"),
                cell(MARK if "chat" in row.scopes else ""),
                cell(MARK if "character" in row.scopes else ("card" if "card" in row.scopes else "")),
                cell(MARK if "global" in row.scopes else ""),
                cell(_origin(row)),
                key=row.key,
            )
        index = next((i for i, r in enumerate(event.rows) if r.key == keep), 0)
        if event.rows:
            books.move_cursor(row=index)
        self._show_row_info()
        self._show_active(event.state, event.warnings)

    def on_lore_active(self, event: LoreActive) -> None:
        self.loaded = True
        if self._tell_chat:  # the chat's session uses the new books now: its meter counts them
            self._tell_chat = False
            self.cattery.prompt_changed()
        self._show_active(event.state, event.warnings)

    def _show_active(self, state: LoreState | None, warnings: list[str]) -> None:
        table = self.query_one("#lore-active", DataTable)
        table.clear()
        s = self.session
        placement = s.recipe.lore_placement if s is not None else "card"
        for a in state.active if state is not None else []:
            e = a.entry
            name = e.name or ", ".join(e.keys[:4]) or (e.content.strip().splitlines() or [""])[0]
            table.add_row(
                cell(a.book or "lorebook"),
                cell(f"#{e.uid} {_short(name, 40)}"),
                cell(a.why),
                cell(where_text(placement, e.position, e.insert_depth, e.role)),
            )
        if state is None:
            table.add_row(cell(""), cell("working out…"), cell(""), cell(""))
        elif not state.active:
            table.add_row(cell(""), cell("no entry is active"), cell(""), cell(""))
        lines = list(warnings)
        note = s.note if s is not None else None
        if note is not None and note.text.strip():
            if state is not None and state.note_in == 0:
                lines.insert(0, f"{note.describe()}: in the next reply")
            elif state is not None and state.note_in is not None:
                lines.insert(0, f"{note.describe()}: in {state.note_in} more of your messages")
            else:
                lines.insert(0, note.describe())
        else:
            lines.insert(0, "no Author's Note (F10 writes one)")
        self.query_one("#lore-note", Static).update(plain("\n".join(lines)))

    def _current_key(self) -> str | None:
        row = self.current_row()
        return row.key if row is not None else None

    def current_row(self) -> BookRow | None:
        books = self.query_one("#lore-books", DataTable)
        if not self.rows or books.cursor_row is None or not 0 <= books.cursor_row < len(self.rows):
            return None
        return self.rows[books.cursor_row]

    @on(DataTable.RowHighlighted, "#lore-books")
    def _row_changed(self) -> None:
        self._show_row_info()

    def _show_row_info(self) -> None:
        row = self.current_row()
        info = self.query_one("#lore-book-info", Static)
        if row is None:
            info.update(plain("No lorebooks yet: Ctrl+O imports a SillyTavern World Info or V3 lorebook file."))
            return
        if row.problem:
            info.update(plain(row.problem))
        elif row.ref is None:
            info.update(plain("The card's own lorebook: always on in chats with this character."))
        else:
            from app.session.lore import SCOPE_NAMES, SCOPES

            where = ", ".join(SCOPE_NAMES[s] for s in SCOPES if s in row.scopes)
            info.update(plain(f"{row.ref} · used by {where}" if where else f"{row.ref} · not attached here"))

    # -- changes -------------------------------------------------------------------------

    @on(DataTable.RowSelected, "#lore-books")
    def _row_selected(self) -> None:
        self.action_toggle("chat")

    def action_toggle(self, scope: str) -> None:
        from app.session.lore import SCOPE_NAMES, set_attached

        s = self.session
        row = self.current_row()
        if s is None or row is None or not self.books_read:
            return
        attached = scope not in row.scopes
        with reported(self, outcome="nothing was changed") as done:
            problem = set_attached(self.shared.ws, row, scope, attached, chat_id=s.chat_id, card_ref=s.card_ref)
        if not done.ok:
            return
        if problem:
            self.notify(problem, severity="warning")
        who = s.char_name if scope == "character" else SCOPE_NAMES[scope]
        self.notify(f"{row.title}: {'attached to' if attached else 'detached from'} {who}")
        self.select_key = row.key if row.origin != "card" else None
        self.changed()

    def changed(self) -> None:
        """Read everything again, and let the chat count its context with the new books."""
        self.books_read = self.loaded = False
        self._tell_chat = True
        self.load()

    def action_import_book(self) -> None:
        def chosen(path: str | None) -> None:
            if path:
                self._import(path)

        self.app.push_screen(
            AskScreen(
                "Import a lorebook (SillyTavern World Info, or a V2/V3 lorebook JSON)",
                placeholder="~/Downloads/Eldoria.json",
                path=True,
            ),
            chosen,
        )

    @work(thread=True, group="lore-import", exit_on_error=False)
    def _import(self, path: str) -> None:
        from pathlib import Path

        try:
            found, new = self.shared.ws.lore_library.add(Path(path))
        except ENVIRONMENT as exc:
            self.post_message(LoreImported(error_line(exc, "import the lorebook"), None, error=True))
            return
        if new:
            line = f"imported {found.title} ({found.entries} entries): Space attaches it to this chat"
        else:
            line = f"{found.title} is in the library already (as {found.name})"
        self.post_message(LoreImported(line, found.name))

    def on_lore_imported(self, event: LoreImported) -> None:
        self.notify(event.line, severity="error" if event.error else "information", timeout=8)
        if event.name is not None:
            self.select_key = event.name
            self.changed()

    def action_remove_book(self) -> None:
        row = self.current_row()
        if row is None or row.origin != "library" or row.ref is None:
            self.notify("only a book of the library can be removed from it", severity="warning")
            return
        ws = self.shared.ws
        name = row.ref
        with reported(self) as counted:
            chats, cards = ws.store.lorebook_users(name)
        if not counted.ok:
            return
        users = chats + cards + (1 if name in ws.global_lorebooks() else 0)
        question = f"Remove {row.title} from the library?" + (
            f" It is attached in {users} places; they will go without it." if users else ""
        )

        def go(yes: bool | None) -> None:
            if not yes:
                return
            with reported(self, outcome="the book was not removed") as done:
                ws.store.forget_lorebook(name)
                problem = ws.set_global_lorebook(name, False)
                ws.lore_library.remove(name)
            if not done.ok:
                return
            if problem:
                self.notify(problem, severity="warning")
            self.notify(f"removed {row.title} from the library")
            self.changed()

        self.app.push_screen(ConfirmScreen(question, "Remove"), go)

    def action_close(self) -> None:
        self.dismiss(None)


def _origin(row: BookRow) -> str:
    if row.origin == "card":
        return "the card"
    if row.origin == "library":
        return "library"
    return _short(row.origin, 30)


def _short(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
