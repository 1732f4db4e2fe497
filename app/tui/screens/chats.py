"""Chats: every chat (with this character, or all), with the last message and the date; resume,
rename, delete, export (SillyTavern JSONL or Markdown) and import SillyTavern chat files.

Imports and exports read and write files of any size up to the chat store's bounds,
so they run in a thread worker that posts what happened; the table stays usable.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Static

from app.errors import CatteryError
from app.tui.guard import ENVIRONMENT, error_line, reported
from app.tui.keys import bindings
from app.tui.messages import ChatsMoved
from app.tui.plain import cell, plain
from app.tui.screens.dialogs import AskScreen, ConfirmScreen
from app.tui.screens.fitted import FittedScreen
from app.tui.state import SharedState

if TYPE_CHECKING:
    from app.chats.store import ChatSummary


def when(ts: float) -> str:
    now = time.time()
    try:
        if now - ts < 86400 and time.localtime(ts).tm_mday == time.localtime(now).tm_mday:
            return time.strftime("today %H:%M", time.localtime(ts))
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))
    except (OverflowError, OSError, ValueError, TypeError):  # a date another tool wrote into the database
        return "?"


def one_line(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat[:width] + ("…" if len(flat) > width else "")


def write_problem(target: Path, exc: OSError) -> str:
    """Why `target` could not be written, said about the path the person typed (an OSError names a temp file)."""
    try:
        if target.is_dir():
            return "that is a folder; give a file name"
        for folder in target.parents:  # the nearest part of the path that exists
            if folder.exists():
                return f"{folder} is a file, not a folder" if not folder.is_dir() else exc.strerror or str(exc)
    except OSError as again:  # a name too long to look at
        return again.strerror or str(again)
    return exc.strerror or str(exc)


def file_name(title: str) -> str:
    return re.sub(r"[^\w.-]+", "_", title).strip("_") or "chat"


class ChatsScreen(SharedState, FittedScreen):
    KEY_SECTION = "chats"
    BINDINGS: ClassVar[list[Binding]] = bindings("chats")

    def __init__(self) -> None:
        super().__init__()
        self.show_all = False
        self.summaries: dict[int, ChatSummary] = {}

    def compose(self) -> ComposeResult:
        yield Static("", id="chats-title", classes="pane-title")
        table: DataTable[str] = DataTable(id="chat-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static(
            "Enter resumes · r renames · d deletes · x exports · Ctrl+O imports a SillyTavern chat · a: all characters",
            classes="muted",
            id="chats-hint",
        )
        yield Footer(compact=True, show_command_palette=False)  # Ctrl+P: F1 says so

    def on_mount(self) -> None:
        table = self.query_one("#chat-table", DataTable)
        table.add_column("chat", key="title")
        table.add_column("character", key="character")
        table.add_column("messages", key="messages")
        table.add_column("last message", key="last")
        table.add_column("changed", key="changed")
        self.watch(self.app, "session_serial", lambda _: self.refresh_table())
        table.focus()

    def on_screen_resume(self) -> None:
        self.refresh_table()

    def _card_ref(self) -> str | None:
        s = self.shared.session
        return s.card_ref if s is not None else None

    def refresh_table(self) -> None:
        store = self.shared.ws.store
        ref = self._card_ref()
        every = self.show_all or ref is None
        with reported(self) as listed:
            rows = store.list_chats(None if every else ref)
        if not listed.ok:
            return  # the table keeps what it showed
        s = self.shared.session
        names = self._names()
        who = names(s.card_ref, s.char_name) if s is not None else "this character"
        self.query_one("#chats-title", Static).update(plain("All chats" if every else f"Chats with {who}"))
        table = self.query_one("#chat-table", DataTable)
        current = s.chat_id if s is not None else None
        table.clear()
        self.summaries = {r.id: r for r in rows}
        for r in rows:
            mark = "● " if r.id == current else ""
            table.add_row(
                cell(mark + r.title),
                cell(names(r.card_ref, r.card_name) if r.card_name else "-"),
                str(r.messages),
                cell(one_line(r.last_message, 48)),
                when(r.updated_at),
                key=str(r.id),
            )
        if current is not None and str(current) in {str(r.id) for r in rows}:
            table.move_cursor(row=table.get_row_index(str(current)))

    def _names(self) -> Callable[[str | None, str], str]:
        """A chat's character as lists show it: with the creator, version or folder when another
        card has the same name (the library is read again only when it changed)."""
        from app.session.namesakes import library_names

        names = library_names(self.shared.ws.cards)
        try:
            labels = names.labels()
        except ENVIRONMENT:  # the library cannot be read: the names the chats stored
            labels = {}
        return lambda ref, name: labels.get(ref, name) if ref else name

    def _selected(self) -> ChatSummary | None:
        table = self.query_one("#chat-table", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.summaries.get(int(key)) if key is not None else None

    @on(DataTable.RowSelected, "#chat-table")
    def row_selected(self) -> None:
        self.action_open_chat()

    def action_open_chat(self) -> None:
        chat = self._selected()
        if chat is not None:
            self.cattery.open_chat(chat.id)

    def action_toggle_all(self) -> None:
        self.show_all = not self.show_all
        self.refresh_table()

    def action_rename(self) -> None:
        chat = self._selected()
        if chat is None:
            return

        def done(title: str | None) -> None:
            if not title:
                return
            stored = title
            with reported(self, outcome="not renamed") as renamed:
                stored = self.shared.ws.store.rename_chat(chat.id, title)  # one line, bounded
            if not renamed.ok:  # asked again, with what was typed
                self.app.push_screen(AskScreen("Rename the chat", title), done)
                return
            s = self.shared.session
            if s is not None and s.chat_id == chat.id:
                s.title, s.title_auto = stored, False  # the person's now: never replaced
                self.cattery.session_serial += 1
            self.refresh_table()

        self.app.push_screen(AskScreen("Rename the chat", chat.title), done)

    def action_delete_chat(self) -> None:
        chat = self._selected()
        if chat is None:
            return

        def go(yes: bool | None) -> None:
            if not yes:
                return
            s = self.shared.session
            was_open = s is not None and s.chat_id == chat.id
            with reported(self, outcome="not deleted") as deleted:
                self.shared.ws.delete_chat(chat.id)
            if not deleted.ok:
                return
            self.notify(f"deleted {chat.title}")
            if was_open:
                self.cattery.new_chat(chat.card_ref)
                self.cattery.switch_mode("chats")
            self.refresh_table()

        self.app.push_screen(ConfirmScreen(f"Delete {chat.title!r} and its {chat.messages} messages?", "Delete"), go)

    def action_export(self) -> None:
        chat = self._selected()
        if chat is None:
            return
        default = str(Path.home() / f"{file_name(chat.title)}.jsonl")

        def done(path: str | None) -> None:
            if path:
                self.export_chat(chat.id, path)

        self.app.push_screen(
            AskScreen(
                "Export the chat",
                default,
                path=True,
                hint=".jsonl: a SillyTavern chat file · .md: Markdown · Enter exports · Esc cancels",
            ),
            done,
        )

    def action_import_chat(self) -> None:
        def done(path: str | None) -> None:
            if path:
                self.import_chat(path)

        self.app.push_screen(
            AskScreen("Import a SillyTavern chat (.jsonl)", placeholder="~/chats/Mochi.jsonl", path=True), done
        )

    # -- files, in a worker ---------------------------------------------------------------

    @work(thread=True, exclusive=True, group="chat-files", exit_on_error=False)
    def export_chat(self, chat_id: int, path: str) -> None:
        from app.chats.transfer import export_markdown, export_st_chat

        target = Path(path).expanduser()
        try:
            if target.suffix.lower() in (".md", ".markdown"):
                export_markdown(self.shared.ws.store, chat_id, target)
            else:
                export_st_chat(self.shared.ws.store, chat_id, target)
        except OSError as exc:
            self.post_message(ChatsMoved(f"not exported to {path}: {write_problem(target, exc)}", error=True))
            return
        except CatteryError as exc:  # the chats database could not be read
            self.post_message(ChatsMoved(f"not exported: {error_line(exc)}", error=True))
            return
        except ValueError as exc:  # a NUL in the typed path
            self.post_message(ChatsMoved(f"{path!r}: not exported: {exc}", error=True))
            return
        self.post_message(ChatsMoved(f"exported to {target}"))

    @work(thread=True, exclusive=True, group="chat-files", exit_on_error=False)
    def import_chat(self, path: str) -> None:
        """Read, check and store a chat file (seconds for one at the store's bounds) off the UI thread."""
        from app.chats.transfer import import_st_chat

        try:
            chat_id = import_st_chat(self.shared.ws.store, Path(path).expanduser(), None)
        except ENVIRONMENT as exc:
            self.post_message(ChatsMoved(f"not imported: {error_line(exc, 'read the chat file')}", error=True))
            return
        except ValueError as exc:  # a NUL in the typed path
            self.post_message(ChatsMoved(f"{path!r}: not imported: {exc}", error=True))
            return
        try:
            self._link_character(chat_id)
        except ENVIRONMENT as exc:  # imported all the same; only the link to a card is missing
            self.post_message(ChatsMoved(f"imported, but not linked to its character: {error_line(exc)}", error=True))
        self.post_message(ChatsMoved("imported; Enter opens it", chat_id=chat_id))

    def on_chats_moved(self, event: ChatsMoved) -> None:
        self.notify(event.line, severity="error" if event.error else "information", timeout=10 if event.error else 5)
        if event.chat_id is not None:
            self.show_all = True
            self.refresh_table()

    def _link_character(self, chat_id: int) -> None:
        """An imported chat belongs to the character of that name, when the library has one."""
        store = self.shared.ws.store
        name = (store.chat(chat_id)["card_name"] or "").lower()
        if not name:
            return
        for entry in self.shared.ws.characters():
            if entry.name.lower() == name:
                store.set_card_ref(chat_id, entry.ref)
                return
