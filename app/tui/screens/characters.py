"""Characters: the library (imported cards and the bundled ones) with avatars and a search box,
the chosen card's details and greetings, import from a path, and starting a chat.

The list follows what happens beside it: chat counts are counted again whenever the
screen is shown or a chat is made (here or by the command line), and the library folder
is looked at (its listing and modification time, a few µs) on show and every couple of
seconds while the screen is up, so a card imported with `cattery cards import` appears
without a restart. Cards of one name are told apart (app/session/namesakes.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Footer, Input, Label, ListItem, ListView, Markdown, OptionList, Static

from app.cards.card import Card
from app.tui.guard import ENVIRONMENT, error_line, reported
from app.tui.keys import bindings
from app.tui.messages import CardImported
from app.tui.plain import plain
from app.tui.screens.dialogs import AskScreen, ConfirmScreen
from app.tui.screens.fitted import FittedScreen
from app.tui.state import SharedState
from app.tui.widgets.avatar import Avatar

if TYPE_CHECKING:
    from app.session.characters import CharacterEntry


LIBRARY_CHECK_EVERY = 2.0  # seconds between looks at the library folder while the screen is shown


@dataclass
class Character:
    entry: CharacterEntry
    card: Card | None
    error: str | None = None
    label: str = ""  # the name as listed: with the creator, version or folder when another card shares it

    @property
    def shown_name(self) -> str:
        return self.label or self.entry.name

    @property
    def haystack(self) -> str:
        if self.card is None:
            return self.entry.name.lower()
        d = self.card.data
        return " ".join(
            [self.card.name, d.get("creator", ""), " ".join(d.get("tags", [])), d.get("description", "")]
        ).lower()


def card_markdown(card: Card, user: str = "User") -> str:
    """The card's fields a user reads before choosing it, with {{char}} and {{user}} filled in."""
    from app.cards.macros import MacroContext, expand

    ctx = MacroContext(char=card.display_name, user=user)
    d = card.data
    parts = []
    for key, title in (
        ("description", "Description"),
        ("personality", "Personality"),
        ("scenario", "Scenario"),
        ("creator_notes", "Creator's notes"),
    ):
        text = expand((d.get(key) or "").strip(), ctx)
        if text:
            parts.append(f"**{title}**\n\n{text}")
    book = d.get("character_book")
    if isinstance(book, dict):
        parts.append(f"*Lorebook: {len(book.get('entries', []))} entries*")
    return "\n\n".join(parts) or "*This card has no description.*"


def _chat_count(chats: int | None) -> str:
    if chats is None:
        return "chats unknown"
    return f"{chats} chat" + ("s" if chats != 1 else "") if chats else "no chats yet"


class CharacterItem(ListItem):
    def __init__(self, character: Character, image_mode: str, chats: int | None = None) -> None:
        super().__init__()
        self.character = character
        self.image_mode = image_mode
        self.chats = chats

    def source_line(self) -> str:
        card = self.character.card
        by = f"by {card.data['creator']} · " if card is not None and card.data.get("creator") else ""
        return f"{by}{self.character.entry.source} · {_chat_count(self.chats)}"

    def set_chats(self, chats: int | None) -> None:
        if chats != self.chats:
            self.chats = chats
            for line in self.query(".char-source"):
                line.update(plain(self.source_line()))  # type: ignore[attr-defined]

    def compose(self) -> ComposeResult:
        c = self.character
        card = c.card
        with Horizontal(classes="char-row"):
            yield Avatar(c.entry.name, card.avatar if card is not None else None, mode=self.image_mode)
            with Vertical(classes="char-row-text"):
                yield Label(plain(c.shown_name), classes="char-name")
                if card is None:
                    yield Label(plain(c.error or "cannot be read"), classes="error-line")
                else:
                    d = card.data
                    yield Label(plain(self.source_line()), classes="muted char-source")
                    if d.get("tags"):
                        yield Label(plain(", ".join(d["tags"][:6])), classes="muted char-tags")


class ChatsCounted(Message):
    """Chats by card reference; None: the chats database could not be read."""

    def __init__(self, counts: Counter[str] | None) -> None:
        super().__init__()
        self.counts = counts


class LibraryRead(Message):
    """Every card of the library, read; `seen`: the folder's signature before the read."""

    def __init__(
        self, characters: list[Character], select: str | None, seen: object, counts: Counter[str] | None
    ) -> None:
        super().__init__()
        self.characters = characters
        self.select = select
        self.seen = seen
        self.counts = counts


class LibraryUnread(Message):
    """Reading the library failed (a bug, which the worker reports): the next look reads it again."""


class CharactersScreen(SharedState, FittedScreen):
    KEY_SECTION = "characters"
    BINDINGS: ClassVar[list[Binding]] = bindings("characters")

    def __init__(self) -> None:
        super().__init__()
        self.characters: list[Character] = []
        self.shown: list[Character] = []  # what the last search left in the list
        self.current: Character | None = None
        self.want_ref: str | None = None
        self.chat_counts: Counter[str] | None = None  # chats by card reference; None: not counted (yet)
        self.library_seen: object = None  # the library folder's signature when the list was read
        self._reading = False

    def compose(self) -> ComposeResult:
        with Horizontal(classes="split", id="char-split"):
            with Vertical(classes="left"):
                yield Static("Characters", classes="pane-title")
                yield Input(placeholder="Search: name, creator, tags, description", id="char-search")
                yield ListView(id="char-list")
                yield Static("", id="char-count", classes="muted")
            with VerticalScroll(classes="right", id="char-detail"):
                with Horizontal(id="char-head"):
                    yield Static(id="char-avatar-slot")
                    with Vertical(id="char-facts"):
                        yield Static("", id="char-title", classes="pane-title")
                        yield Static("", id="char-meta", classes="muted")
                with Horizontal(id="char-buttons"):
                    yield Button("Chat", variant="primary", id="chat")
                    yield Button("New chat", id="new-chat")
                    yield Button("Import…", id="import")
                    yield Button("Remove", variant="error", id="remove")
                yield Static("Greeting for a new chat", classes="pane-title")
                yield OptionList(id="greetings", markup=False)
                # A stranger's card: its links are shown, never opened by a click.
                yield Markdown("", id="char-text", open_links=False)
        yield Footer(compact=True, show_command_palette=False)  # Ctrl+P: F1 says so

    def on_mount(self) -> None:
        self.refresh_list()
        self.query_one("#char-list", ListView).focus()
        self.library_timer = self.set_interval(LIBRARY_CHECK_EVERY, self.check_library)
        # A chat made here, in the chat or by the command line (the app notices those) changes a count.
        self.watch(self.app, "session_serial", lambda _: self.count_chats() if self.is_current else None, init=False)

    def on_screen_resume(self) -> None:
        if self.shared.session is not None and self.current is None:
            self.want_ref = self.shared.session.card_ref
        timer = getattr(self, "library_timer", None)
        if timer is not None:
            timer.resume()
        self.check_library()
        self.count_chats()

    def on_screen_suspend(self) -> None:
        timer = getattr(self, "library_timer", None)
        if timer is not None:
            timer.pause()  # nothing to keep fresh while another screen is shown

    def check_library(self) -> None:
        """Read the list again when the library folder changed since it was read (a card imported,
        replaced or removed, here or by `cattery cards`)."""
        from app.session.namesakes import library_signature

        if self._reading:
            return
        if library_signature(self.shared.ws.cards.root) != self.library_seen:
            self.refresh_list(self.current.entry.ref if self.current else None)

    @work(thread=True, exclusive=True, group="character-chats", exit_on_error=False)
    def count_chats(self) -> None:
        try:
            counts = Counter(c.card_ref for c in self.shared.ws.store.list_chats(None) if c.card_ref)
        except ENVIRONMENT:  # the chats database cannot be read: the counts say so, the cards are listed
            self.post_message(ChatsCounted(None))
            return
        self.post_message(ChatsCounted(counts))

    def on_chats_counted(self, event: ChatsCounted) -> None:
        self.chat_counts = event.counts
        for item in self.query(CharacterItem):
            item.set_chats(self._count(item.character))
        if self.current is not None:
            self._show_facts(self.current)

    def _count(self, character: Character) -> int | None:
        return None if self.chat_counts is None else self.chat_counts.get(character.entry.ref, 0)

    # -- the list ---------------------------------------------------------------------

    def refresh_list(self, select: str | None = None) -> None:
        self._reading = True  # the timer does not start another read meanwhile
        self._read_list(select)

    def on_library_unread(self, event: LibraryUnread) -> None:
        self._reading = False

    @work(thread=True, exclusive=True, group="characters", exit_on_error=False)
    def _read_list(self, select: str | None = None) -> None:
        """Read every card off the main thread: a big library takes a moment."""
        try:
            self._read_cards(select)
        except Exception:  # a bug: the worker reports it; the library is looked at again next time
            self.post_message(LibraryUnread())
            raise

    def _read_cards(self, select: str | None) -> None:
        from app.session.namesakes import Namesake, library_signature, tell_apart

        ws = self.shared.ws
        seen = library_signature(ws.cards.root)  # before reading: a change meanwhile is read next time
        out: list[Character] = []
        try:
            entries = ws.characters()
        except ENVIRONMENT as exc:  # the library folder cannot be read: the bundled cards are still listed
            self.app.notify(error_line(exc, "read the card library"), severity="error", timeout=10)
            from app.session.characters import bundled_entries

            entries = bundled_entries()
        for entry in entries:
            try:
                out.append(Character(entry, entry.load()))
            except ENVIRONMENT as exc:
                out.append(Character(entry, None, error_line(exc, "read the card")))
        labels = tell_apart(Namesake.of(c.entry, c.card) for c in out)
        for c in out:
            c.label = labels.get(c.entry.ref, c.entry.name)
        try:
            counts: Counter[str] | None = Counter(c.card_ref for c in ws.store.list_chats(None) if c.card_ref)
        except ENVIRONMENT:
            counts = None
        self.post_message(LibraryRead(out, select, seen, counts))

    def on_library_read(self, event: LibraryRead) -> None:
        characters, select, counts = event.characters, event.select, event.counts
        self._reading = False
        self.library_seen = event.seen
        # The library was read because it is new to this screen or changed: a card added or removed
        # may make or end two of one name, which the chat's title and the chat list show.
        self.cattery.session_serial += 1
        self.chat_counts = counts
        self.characters = characters
        if select is None and self.shared.session is not None:
            select = self.shared.session.card_ref
        self.filter(self.query_one("#char-search", Input).value, select)

    def filter(self, text: str, select: str | None = None) -> None:
        words = text.lower().split()
        shown = [c for c in self.characters if all(w in c.haystack for w in words)]
        self.shown = shown
        lv = self.query_one("#char-list", ListView)
        lv.clear()
        lv.extend(CharacterItem(c, self.shared.image_mode, self._count(c)) for c in shown)
        total = len(self.characters)
        self.query_one("#char-count", Static).update(
            f"{len(shown)} of {total}"
            if words
            else f"{total} characters" + (" · Ctrl+O imports a card" if total else "")
        )
        index = next((i for i, c in enumerate(shown) if c.entry.ref == select), 0 if shown else None)
        if index is not None:
            lv.index = index
            self.show_character(shown[index])
        else:
            self.show_character(None)

    @on(Input.Changed, "#char-search")
    def search_changed(self, event: Input.Changed) -> None:
        self.filter(event.value, self.current.entry.ref if self.current else None)

    @on(Input.Submitted, "#char-search")
    def search_done(self) -> None:
        self.query_one("#char-list", ListView).focus()

    @on(ListView.Highlighted, "#char-list")
    def highlighted(self, event: ListView.Highlighted) -> None:
        # The list's current item, not the event's: events from refilling the list arrive late.
        # And only one of the characters the last search shows: while a refill is still being
        # mounted (a slow machine, a search typed fast), the list can hold the previous search's
        # items, and taking one would make Ctrl+N start a chat with a character no longer shown.
        item = self.query_one("#char-list", ListView).highlighted_child
        if isinstance(item, CharacterItem) and any(item.character is c for c in self.shown):
            self.show_character(item.character)

    @on(ListView.Selected, "#char-list")
    def selected(self, event: ListView.Selected) -> None:
        if isinstance(event.item, CharacterItem):
            self.show_character(event.item.character)
            self.action_chat()

    # -- the details ------------------------------------------------------------------

    def show_character(self, character: Character | None) -> None:
        if character is self.current and character is not None:
            return
        self.current = character
        slot = self.query_one("#char-avatar-slot", Static)
        slot.remove_children()
        title = self.query_one("#char-title", Static)
        meta = self.query_one("#char-meta", Static)
        greetings = self.query_one("#greetings", OptionList)
        greetings.clear_options()
        text = self.query_one("#char-text", Markdown)
        remove = self.query_one("#remove", Button)
        if character is None:
            title.update("No character")
            meta.update("Import a card (PNG, JSON, CharX, YAML) with Ctrl+O.")
            text.update("")
            remove.disabled = True
            return
        card = character.card
        remove.disabled = character.entry.source != "library"
        if card is None:
            title.update(plain(character.entry.name))
            meta.update(plain(character.error or ""))
            text.update("")
            return
        slot.mount(Avatar(card.name, card.avatar, mode=self.shared.image_mode, big=True))
        d = card.data
        nickname = f" ({d['nickname']})" if d.get("nickname") and d["nickname"] != card.name else ""
        title.update(plain(character.shown_name + nickname))
        self._show_facts(character)
        from app.cards.macros import MacroContext, expand

        user = self.shared.ws.settings.persona.name
        ctx = MacroContext(char=card.display_name, user=user)
        for i, g in enumerate([d["first_mes"], *d["alternate_greetings"]]):
            if g.strip():
                first = " ".join(expand(g, ctx).split())
                greetings.add_option(f"{i + 1}. {first[:140]}" + ("…" if len(first) > 140 else ""))
        if greetings.option_count:
            greetings.highlighted = 0
        text.update(card_markdown(card, user))

    def _show_facts(self, character: Character) -> None:
        """Creator, version, where the card is, and how many chats there are with it (counted again
        whenever the screen is shown or a chat is made)."""
        meta = self.query_one("#char-meta", Static)
        card = character.card
        if card is None:
            meta.update(plain(character.error or ""))
            return
        d = card.data
        facts = [
            f"by {d['creator']}" if d.get("creator") else "",
            f"version {d['character_version']}" if d.get("character_version") else "",
            {"bundled": "comes with Cattery", "library": "in your library"}.get(character.entry.source, ""),
            _chat_count(self._count(character)),
        ]
        if character.entry.source == "library":
            facts.append(f"folder {character.entry.ref.partition(':')[2]}")
        tags = ", ".join(d.get("tags") or [])
        meta.update(plain(" · ".join(f for f in facts if f) + (f"\ntags: {tags}" if tags else "")))

    # -- actions ----------------------------------------------------------------------

    def on_button_pressed(self, event: Button.Pressed) -> None:
        {
            "chat": self.action_chat,
            "new-chat": self.action_new_chat,
            "import": self.action_import_card,
            "remove": self.action_delete_card,
        }[event.button.id or ""]()

    def action_search(self) -> None:
        self.query_one("#char-search", Input).focus()

    def action_chat(self) -> None:
        """The last chat with this character, as SillyTavern opens it; a new one if there is none."""
        c = self.current
        if c is None or c.card is None:
            return
        latest = None
        with reported(self):
            latest = self.shared.ws.store.latest_chat(c.entry.ref)
        if latest is not None and self.cattery.open_chat(latest):
            return
        self.action_new_chat()

    def action_new_chat(self) -> None:
        c = self.current
        if c is None or c.card is None:
            return
        greeting = self.query_one("#greetings", OptionList).highlighted or 0
        self.cattery.new_chat(c.entry.ref, greeting)

    def action_import_card(self) -> None:
        def done(path: str | None) -> None:
            if path:
                self.import_card(path)

        self.app.push_screen(AskScreen("Import a character card", placeholder="~/Downloads/card.png", path=True), done)

    @work(thread=True, exclusive=True, group="card-import", exit_on_error=False)
    def import_card(self, path: str) -> None:
        """Read, check and store a card (a big PNG takes a moment) off the UI thread."""
        from pathlib import Path

        from app.cards.read import read_card

        try:
            source = Path(path).expanduser()
            card = read_card(source)
            entry = self.shared.ws.cards.add(card, str(source.absolute()))
        except ENVIRONMENT as exc:
            self.post_message(CardImported(None, f"not imported: {error_line(exc, 'read the card')}", error=True))
            return
        except ValueError as exc:  # a NUL in the typed path
            self.post_message(CardImported(None, f"{path!r}: not imported: {exc}", error=True))
            return
        self.post_message(CardImported(f"library:{entry.slug}", f"imported {card.name}"))

    def on_card_imported(self, event: CardImported) -> None:
        self.notify(event.line, severity="error" if event.error else "information", timeout=10 if event.error else 5)
        if event.ref is not None:
            self.refresh_list(event.ref)

    def action_delete_card(self) -> None:
        c = self.current
        if c is None or c.entry.source != "library":
            return

        def go(yes: bool | None) -> None:
            if yes:
                with reported(self, outcome="not removed") as removed:
                    self.shared.ws.cards.remove(c.entry.ref.partition(":")[2])
                if not removed.ok:
                    return
                self.notify(f"removed {c.entry.name} (its chats are kept)")
                self.current = None
                self.refresh_list()

        self.app.push_screen(ConfirmScreen(f"Remove {c.entry.name} from the library?", "Remove"), go)
