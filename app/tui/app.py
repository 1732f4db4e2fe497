"""The chat screen: messages streamed in as they are generated, a multi-line input, a status bar.

Generation runs in a worker thread that only posts messages; the UI thread renders
them. Keys: Enter sends, Ctrl+J adds a line, Esc stops a reply, Ctrl+Q quits.
"""

from __future__ import annotations

import time
from typing import ClassVar

from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message as TMessage
from textual.widgets import Footer, Markdown, Static, TextArea

from app.tui.session import ChatSession

CSS = """
#messages { height: 1fr; padding: 0 1; }
#messages > Vertical { height: auto; }
#messages Markdown { margin: 0 0 0 1; padding: 0; }
.speaker { color: $accent; text-style: bold; margin-top: 1; }
.speaker.user { color: $success; }
.stopped { color: $warning; }
#status { height: 1; background: $boost; color: $text-muted; padding: 0 1; }
#input { height: 5; }
"""


class ChatInput(TextArea):
    """Enter sends; Ctrl+J (or Shift+Enter where the terminal tells them apart) adds a line."""

    class Submitted(TMessage):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.prevent_default()
            event.stop()
            text = self.text.strip()
            if text:
                self.post_message(self.Submitted(text))
                self.text = ""
            return
        if event.key in ("ctrl+j", "shift+enter"):
            event.prevent_default()
            event.stop()
            self.insert("\n")
            return
        await super()._on_key(event)


class Piece(TMessage):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class ReplyDone(TMessage):
    def __init__(self, text: str, stats: object, error: str | None = None) -> None:
        super().__init__()
        self.text = text
        self.stats = stats
        self.error = error


class CatteryApp(App[None]):
    CSS = CSS
    TITLE = "Cattery"
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("escape", "stop", "Stop reply"),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("alt+left", "swipe(-1)", "Previous"),
        Binding("alt+right", "swipe(1)", "Next"),
        Binding("ctrl+q", "quit", "Quit"),
    ]

    def __init__(self, session: ChatSession) -> None:
        super().__init__()
        self.session = session
        self._generation = None
        self._stream = None
        self._reply_view: Markdown | None = None
        self._regenerating = False

    def compose(self) -> ComposeResult:
        yield VerticalScroll(id="messages")
        yield Static(id="status")
        yield ChatInput(id="input", placeholder="Message (Enter sends, Ctrl+J new line, Esc stops)")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.session.title
        for msg in self.session.history:
            self._add_view(msg.role, msg.content)
        self._update_status()
        self.query_one(ChatInput).focus()

    def _speaker(self, role: str) -> str:
        sp = self.session.builder.speakers
        return sp.user if role == "user" else sp.char if role == "assistant" else "System"

    def _add_view(self, role: str, text: str) -> Markdown:
        box = self.query_one("#messages", VerticalScroll)
        view = Markdown(text)
        box.mount(Vertical(Static(self._speaker(role), classes=f"speaker {role}"), view))
        box.scroll_end(animate=False)
        return view

    def _update_status(self, extra: str = "") -> None:
        s = self.session
        report = s.engine.report
        where = report.placement if report else "?"
        used = ""
        if s.history:
            built = s.builder.build(
                s.history,
                n_ctx=s.engine.n_ctx,
                reserve=s.reserve,
                state=type(s.window)(s.window.start, s.window.examples_dropped),
            )
            plan = s.engine.plan(built.tokens or [])
            used = (
                f" · ctx {len(built.tokens or [])}/{s.engine.n_ctx} ({built.pinned_tokens} pinned,"
                f" {len(built.dropped)} out) · next turn evaluates your message + {plan.to_evaluate}"
            )
        path = report.path.name if report else "?"
        self.query_one("#status", Static).update(f"{path} · {where} · {s.format_note}{used}{extra}")

    def on_chat_input_submitted(self, event: ChatInput.Submitted) -> None:
        if self._generation is not None:
            self.notify("a reply is still being written (Esc stops it)", severity="warning")
            return
        self.session.append("user", event.text)
        self._add_view("user", event.text)
        self._reply_view = self._add_view("assistant", "")
        self._stream = Markdown.get_stream(self._reply_view)
        self._regenerating = False
        self.generate()

    async def action_regenerate(self) -> None:
        """A new reply in place of the last one; the old one stays as an alternative (swipe)."""
        s = self.session
        if self._generation is not None or not s.history or s.history[-1].role != "assistant" or len(s.history) < 2:
            return
        self._reply_view = self.query("Markdown").last()
        await self._reply_view.update("")
        self._stream = Markdown.get_stream(self._reply_view)
        self._regenerating = True
        self.generate()

    async def action_swipe(self, step: int) -> None:
        if self._generation is not None:
            return
        moved = self.session.swipe(step)
        if moved is None:
            return
        await self.query("Markdown").last().update(self.session.history[-1].content)
        self._update_status(f" · reply {moved[0] + 1}/{moved[1]}")

    @work(thread=True, exclusive=True, group="generate")
    def generate(self) -> None:
        s = self.session
        try:
            history = s.history[:-1] if self._regenerating else s.history
            built = s.builder.build(history, n_ctx=s.engine.n_ctx, reserve=s.reserve, state=s.window)
            gen = s.engine.generate(built.tokens or built.text, s.sampler, stop=built.stop)
            self._generation = gen
            for piece in gen:
                self.post_message(Piece(piece))
            self.post_message(ReplyDone(gen.text, gen.stats))
        except Exception as exc:  # shown on screen, never a crash
            self.post_message(ReplyDone("", None, str(exc)))

    async def on_piece(self, event: Piece) -> None:
        if self._stream is not None:
            await self._stream.write(event.text)
            self.query_one("#messages", VerticalScroll).scroll_end(animate=False)

    async def on_reply_done(self, event: ReplyDone) -> None:
        if self._stream is not None:
            await self._stream.stop()
        self._generation = None
        if event.error:
            self.notify(event.error, severity="error")
            return
        stats = event.stats
        stopped = getattr(stats, "finish_reason", "") == "cancelled"
        provenance = {
            "model": str(self.session.engine.report.path) if self.session.engine.report else None,
            "format": self.session.builder.format_name,
            "seed": getattr(stats, "seed", None),
            "stats": stats.as_dict() if stats else None,
            "time": time.time(),
        }
        state = "stopped" if stopped else "done"
        if self._regenerating:
            self.session.add_swipe(event.text.strip(), state, provenance)
        else:
            self.session.append("assistant", event.text.strip(), state, provenance)
        if self._reply_view is not None:
            await self._reply_view.update(event.text.strip() + ("\n\n*(stopped)*" if stopped else ""))
        tps = getattr(stats, "decode_tokens_per_second", 0.0)
        self._update_status(f" · {tps:.1f} tok/s")

    def action_stop(self) -> None:
        if self._generation is not None:
            self._generation.cancel()
