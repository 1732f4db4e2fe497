"""One message of the chat: avatar, speaker, which alternative is shown, and the text as Markdown.

A message can take the focus; its keys (edit, delete, branch, copy, swipe) act on
it, and the chat screen carries them out: the view only says what was asked.

Finished text is drawn by one widget per message (Rich's Markdown in a Static):
Textual's Markdown widget makes a widget of every paragraph, and a long chat of
them makes every screen update slower. While a reply is written it streams into
a Textual Markdown widget (`Markdown.get_stream()`), in bounded pieces; when it
ends, the message shows the whole text in its one widget again.
"""

from __future__ import annotations

import contextlib
import time
from typing import ClassVar

from rich.markdown import Markdown as RichMarkdown
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

from app.chats.store import StoredMessage
from app.tui.keys import bindings
from app.tui.plain import plain
from app.tui.widgets.avatar import Avatar

SEAL_CHARS = 1200  # a streamed reply moves on to a new piece after this much text


class MessageBody(Static):
    """A message's text, rendered as Markdown in a single widget."""

    def __init__(self, text: str = "", classes: str = "") -> None:
        super().__init__(classes=f"body {classes}".strip())
        self.source = ""
        self.set_text(text)

    def set_text(self, text: str) -> None:
        self.source = text
        self.update(RichMarkdown(text, hyperlinks=False) if text.strip() else "")


class ReplyStream:
    """Streams a reply into a message in pieces of bounded size.

    The Markdown widget being written is laid out again on every update, and that
    costs more the more it holds, so a long reply would fall further and further
    behind the model. Once the text being written passes SEAL_CHARS and reaches a
    paragraph break (outside a code fence), that piece becomes a plain body widget
    and the stream goes on in a fresh Markdown widget below it.
    """

    def __init__(self, view: MessageView) -> None:
        self.view = view
        self.live = Markdown("", open_links=False, classes="live")
        self.stream: MarkdownStream | None = None
        self.chunk = ""

    async def start(self) -> None:
        await self.view.column.mount(self.live)
        self.stream = Markdown.get_stream(self.live)

    async def write(self, text: str) -> None:
        assert self.stream is not None
        self.chunk += text
        await self.stream.write(text)
        if len(self.chunk) >= SEAL_CHARS and self.chunk.endswith("\n\n") and self.chunk.count("```") % 2 == 0:
            await self.stream.stop()
            await self.view.column.mount(MessageBody(self.chunk, "sealed"), before=self.live)
            await self.live.update("")
            self.chunk = ""
            self.stream = Markdown.get_stream(self.live)

    async def stop(self) -> None:
        if self.stream is not None:
            await self.stream.stop()


NOT_SAVED = "(not saved)"


def thought_line(reasoning: str, facts: object, *, expanded: bool, live: bool) -> str:
    """A reply's reasoning, folded to one line (how long it thought) or unfolded under that line."""
    if live:
        head = f"thinking… {len(reasoning.split())} words"
    else:
        from app.session.thinking import thought_summary

        head = thought_summary(facts)
    if not expanded:
        return f"▸ {head} · t unfolds"
    return f"▾ {head}\n{reasoning.strip()}"


def header_text(
    speaker: str, m: StoredMessage | None, writing: str = "", unsaved: bool = False, another: bool = False
) -> str:
    """`another`: a new alternative is being written, and it is the one shown (‹ 3/3 › for a third)."""
    parts = [speaker]
    if m is not None and writing and another:
        parts.append(f"‹ {len(m.swipes) + 1}/{len(m.swipes) + 1} ›")
    elif m is not None and len(m.swipes) > 1:
        parts.append(f"‹ {m.active + 1}/{len(m.swipes)} ›")
    if unsaved:
        parts.append(NOT_SAVED)
    elif writing:
        parts.append(writing)
    elif m is not None and m.state == "stopped":
        parts.append("(stopped)")
    if m is not None and m.created_at:
        with contextlib.suppress(OverflowError, OSError, ValueError, TypeError):  # a time another tool wrote
            parts.append(time.strftime("%H:%M", time.localtime(m.created_at)))
    return "  ".join(parts)


class MessageView(Widget, can_focus=True):
    BINDINGS: ClassVar[list[Binding]] = bindings("message")

    class Action(Message):
        """A key pressed on a message: the chat screen does the work."""

        def __init__(self, view: MessageView, name: str, step: int = 0) -> None:
            super().__init__()
            self.view = view
            self.name = name
            self.step = step

    def __init__(
        self,
        index: int,
        message: StoredMessage | None,
        speaker: str,
        role: str,
        avatar: bytes | None = None,
        image_mode: str = "auto",
    ) -> None:
        super().__init__(classes=role)
        self.index = index
        self.message = message
        self.speaker = speaker
        self.role = role
        self.avatar = avatar
        self.image_mode = image_mode
        self.writing = ""
        self.another = False  # the text being written is a new alternative
        # A reply the chat store would not take: shown (and copyable) until the chat is left,
        # below the first `after` stored messages (app/tui/screens/chat.py keeps it there).
        self.unsaved = False
        self.unsaved_text = ""
        self.after = 0
        # A thinking model's reasoning: unfolded or not, and the part streamed so far while it writes.
        self.expanded = False
        self.live_reasoning: str | None = None

    @property
    def message_id(self) -> int | None:
        return self.message.id if self.message is not None else None

    @property
    def text(self) -> str:
        return self.message.text if self.message is not None else self.unsaved_text

    def compose(self) -> ComposeResult:
        yield Avatar(self.speaker, self.avatar, mode=self.image_mode)
        with Vertical(classes="body-column"):
            yield Static(plain(self._header()), classes="speaker")
            thought = Static("", classes="thought")
            thought.display = False
            yield thought
            yield MessageBody(self.text)

    def on_mount(self) -> None:
        self._update_thought()

    def _header(self) -> str:
        return header_text(self.speaker, self.message, self.writing, self.unsaved, self.another)

    def mark_unsaved(self, text: str, after: int) -> None:
        """This view holds a reply that could not be saved: it stays, marked, and never becomes a stored one."""
        self.unsaved = True
        self.unsaved_text = text
        self.after = after
        self.writing = ""
        self.another = False
        self.remove_class("-writing")
        self.add_class("-unsaved")
        self._update_header()

    @property
    def column(self) -> Vertical:
        return self.query_one(".body-column", Vertical)

    @property
    def body(self) -> MessageBody:
        """The widget with the message's text (before it, while a reply streams in)."""
        return self.query_one("MessageBody.body", MessageBody)

    @property
    def shown_text(self) -> str:
        """All the text on screen: the body, the pieces of a reply being streamed, its live part."""
        parts = [w.source for w in self.column.children if isinstance(w, (MessageBody, Markdown))]
        return "".join(parts)

    async def stream(self, *, replace: bool = False) -> ReplyStream:
        """Start streaming a reply into this message (`replace`: a new alternative, not more text)."""
        if replace:
            self.body.set_text("")
        stream = ReplyStream(self)
        await stream.start()
        return stream

    def _drop_stream_widgets(self) -> None:
        for w in list(self.column.children):
            if isinstance(w, Markdown) or (isinstance(w, MessageBody) and w.has_class("sealed")):
                w.remove()

    def show(self, index: int, message: StoredMessage) -> None:
        """Show a message's current state (after an edit, a swipe, a finished reply)."""
        changed = self.message is None or message.text != self.text
        self.index = index
        self.message = message
        self.writing = ""
        self.another = False
        self.remove_class("-writing")
        self.set_class(message.state == "stopped", "-stopped")
        self.live_reasoning = None
        self._update_header()
        if not self.children:
            return
        self._update_thought()
        streamed = any(isinstance(w, Markdown) for w in self.column.children)
        if streamed:  # a reply streamed in pieces: the whole text in the one body widget again
            self._drop_stream_widgets()
        if changed or streamed:
            self.body.set_text(message.text)

    def set_writing(self, note: str, *, another: bool = False) -> None:
        self.writing = note
        self.another = another and bool(note)
        self.set_class(bool(note), "-writing")
        self._update_header()

    # -- reasoning ----------------------------------------------------------------------

    def begin_thinking(self, before: str = "") -> None:
        """A reply that may think is being written (`before`: the reasoning a continued reply had)."""
        self.live_reasoning = before
        self._update_thought()

    def add_thinking(self, text: str) -> None:
        self.live_reasoning = (self.live_reasoning or "") + text
        self._update_thought()

    def toggle_thought(self) -> bool:
        """Unfold or fold the reasoning; False when this message has none."""
        if not self.reasoning:
            return False
        self.expanded = not self.expanded
        self._update_thought()
        return True

    @property
    def reasoning(self) -> str:
        if self.live_reasoning is not None:
            return self.live_reasoning
        return self.message.reasoning if self.message is not None else ""

    def _update_thought(self) -> None:
        for thought in self.query(".thought").results(Static):
            reasoning = self.reasoning
            thought.display = bool(reasoning.strip())
            if not reasoning.strip():
                continue
            m = self.message
            facts = m.swipes[m.active].provenance.get("reasoning") if m is not None and m.swipes else None
            live = self.live_reasoning is not None
            thought.update(plain(thought_line(reasoning, facts, expanded=self.expanded, live=live)))

    def action_thoughts(self) -> None:
        self.toggle_thought()

    def _update_header(self) -> None:
        for header in self.query(".speaker").results(Static):  # none yet before the view is composed
            header.update(plain(self._header()))

    # The keys only say what was asked; the screen knows the chat.
    def action_edit(self) -> None:
        self.post_message(self.Action(self, "edit"))

    def action_delete(self) -> None:
        self.post_message(self.Action(self, "delete"))

    def action_delete_alternative(self) -> None:
        self.post_message(self.Action(self, "delete_alternative"))

    def action_delete_after(self) -> None:
        self.post_message(self.Action(self, "delete_after"))

    def action_branch(self) -> None:
        self.post_message(self.Action(self, "branch"))

    def action_copy(self) -> None:
        self.post_message(self.Action(self, "copy"))

    def action_swipe(self, step: int) -> None:
        self.post_message(self.Action(self, "swipe", step))

    def action_move(self, step: int) -> None:
        self.post_message(self.Action(self, "move", step))

    def action_details(self) -> None:
        self.post_message(self.Action(self, "details"))

    def action_back(self) -> None:
        self.post_message(self.Action(self, "back"))
