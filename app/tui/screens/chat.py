"""The chat: messages with avatars, replies streamed as they are written, the input, the status bar.

Generation runs in a thread worker that only posts messages (pieces of text, the
end); the screen renders them. Each finished or stopped reply is committed by the
worker the moment it ends, so what the screen shows as finished is on disk.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Button, Footer, ProgressBar, Static

from app.errors import CatteryError, ContextOverflowError
from app.prompt.reasoning import split_reply
from app.tui.guard import ENVIRONMENT, error_line, reported
from app.tui.keys import ScreenKeysFirst, bindings, display, keys_of
from app.tui.messages import DraftMeasured, Piece, PreviewReady, TurnDone, TurnStarted
from app.tui.plain import plain
from app.tui.screens.dialogs import ConfirmScreen, EditScreen, TextScreen
from app.tui.state import SharedState
from app.tui.widgets.chat_input import ChatInput
from app.tui.widgets.message_view import MessageView, ReplyStream
from app.tui.widgets.status_bar import ModelLine, ModelStatus, StatusBar

if TYPE_CHECKING:
    from app.chats.store import StoredMessage
    from app.session.chat import ChatSession, MessageFit, Preview, Turn

log = logging.getLogger("cattery.tui")

FIRST_FRAME_MESSAGES = 8  # mounted before the first frame; the rest of the batch just after

WRITING = {
    "reply": "writing…",
    "speak": "writing…",
    "regenerate": "writing another alternative…",
    "continue": "continuing…",
    "waiting": "waiting for the model to load…",
}

# What each kind of turn is called when it has to wait (a reply is being written).
ASKED = {
    "reply": "Not sent, it stays in the box",
    "speak": "Letting the character speak again",
    "regenerate": "A new alternative",
    "continue": "Continuing",
    "impersonate": "Impersonate (writing your line)",
    "swipe": "Changing the alternative shown",
}

MEASURE_AFTER_S = 0.3  # a pause in typing before the draft is counted for the status bar


def _snapshot_line(use: Any) -> list[str]:
    """The reply's turn started from the chat's KV snapshot: said, with what it spared."""
    if not isinstance(use, dict):
        return []
    return [
        f"snapshot     started from the chat's KV snapshot ({use.get('source', '?')}):"
        f" {use.get('tokens', '?')} tokens not evaluated again"
    ]


def _thinking_line(facts: Any) -> list[str]:
    """A thinking model's reply: how long it thought, and whether the block was cut or closed for it."""
    from app.session.thinking import thought_summary

    if not isinstance(facts, dict):
        return []
    return [f"thinking     {thought_summary(facts)}; kept apart from the text (Ctrl+B or t unfolds it)"]


def describe_provenance(prov: dict[str, Any], state: str) -> str:
    """A reply's provenance as a person reads it."""
    if not prov:
        return "Written by hand, imported, or a card's greeting: no generation details."
    model = prov.get("model") or {}
    if model.get("engine"):  # written by a remote engine: the server says what it evaluated
        where = [
            f"model        {model.get('server_model', '?')}, served by {model.get('server', '?')}",
            f"engine       {model['engine']}" + (f", build {model['build']}" if model.get("build") else ""),
            f"context      {model.get('n_ctx', '?')} tokens",
        ]
        evaluated = "evaluated by the server"
    else:
        where = [
            f"model        {model.get('file', '?')}" + (f"  ({model.get('quant')})" if model.get("quant") else ""),
            f"sha256       {model.get('sha256') or 'not computed yet'}",
            f"context      {model.get('n_ctx', '?')} tokens, {model.get('gpu_layers', 0)} layers on the GPU",
        ]
        evaluated = "evaluated"
    lines = [
        *where,
        f"format       {prov.get('format', '?')}",
        f"seed         {prov.get('seed', '?')}",
        f"prompt       {prov.get('prompt_tokens', '?')} tokens, {prov.get('prompt_evaluated', '?')} {evaluated},"
        f" {prov.get('prompt_reused', '?')} from the cache",
        f"first token  {prov.get('time_to_first_token', 0) * 1000:.0f} ms",
        *_snapshot_line(prov.get("kv_snapshot")),
        *_thinking_line(prov.get("reasoning")),
        f"reply        {prov.get('generated_tokens', '?')} tokens at {prov.get('tokens_per_second', 0):.1f} tok/s,"
        f" ended by {prov.get('finish_reason', '?')}" + (" (stopped)" if state == "stopped" else ""),
    ]
    if prov.get("time"):
        lines.append(f"written      {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(prov['time']))}")
    sampler = prov.get("sampler") or {}
    if sampler:
        lines.append("sampler      " + ", ".join(f"{k} {v}" for k, v in sampler.items() if v is not None))
    for extra in prov.get("continued", []):
        lines.append(
            f"continued    +{extra.get('generated_tokens', '?')} tokens, seed {extra.get('seed', '?')},"
            f" {extra.get('tokens_per_second', 0):.1f} tok/s"
        )
    if "sillytavern" in prov:
        lines.append("imported     " + json.dumps(prov["sillytavern"], ensure_ascii=False)[:400])
    return "\n".join(lines)


class ChatScreen(SharedState, ScreenKeysFirst, Screen[None]):
    KEY_SECTION = "chat"
    BINDINGS: ClassVar[list[Binding]] = bindings("chat")
    # Whatever way the chat comes back with nothing focused, the keys go to the box.
    AUTO_FOCUS = "#input"
    # Classes for a small terminal (assets/styles/cattery.tcss): chat and box first.
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-narrow"), (60, "-wide")]
    VERTICAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-short"), (16, "-tall")]

    def __init__(self) -> None:
        super().__init__()
        self.serial = 0
        self.turn: Turn | None = None
        self.busy: str | None = None  # the kind of turn asked for, until it ends
        self.cancel_asked = False
        self.pending: tuple[str, int | None] | None = None  # a turn waiting for the model to load
        self.target: MessageView | None = None
        self.stream: ReplyStream | None = None
        self.views: list[MessageView] = []
        self.first_shown = 0
        self.shown_chat: int | None = None
        self._session_seen: ChatSession | None = None  # the app's session when last looked at
        self.preview: Preview | None = None
        self.turn_context: Preview | None = None  # the context of the turn being written
        self.draft_fit: MessageFit | None = None  # the box's text against the room for one message
        self._measure_timer: Timer | None = None
        self.waiting_text: tuple[int, str] | None = None  # (message id, text) sent while the model loads
        self._box_chat: int | None = None  # the chat whose draft the box holds
        self._box: ChatInput | None = None
        self.tokens_per_second: float | None = None
        self.server_count: int | None = None  # the last turn's prompt tokens a remote engine evaluated
        self.note = ""
        self._left_for_dialog = True  # see on_screen_suspend
        self._draft_timer: Timer | None = None
        self._draft_error: str | None = None  # said once, not at every pause in typing

    @property
    def session(self) -> ChatSession | None:
        return self.shared.session

    def compose(self) -> ComposeResult:
        with Horizontal(id="top-bar"):
            yield Static(id="chat-title")
            yield ModelLine(id="model-line")
        # Not focusable: a list that took the focus (a click between messages, a selected message
        # removed under it) would swallow what is typed; messages are selected with ↑ or Ctrl+↑.
        yield VerticalScroll(id="messages", can_focus=False)
        yield ProgressBar(id="load-progress", total=100, show_eta=False)
        yield StatusBar(id="status")
        yield ChatInput(
            keymap=self.shared.keymap,
            id="input",
            placeholder="Message · Enter sends · Ctrl+J new line · Esc stops · F1 keys",
        )
        yield Footer(compact=True, show_command_palette=False)  # Ctrl+P: F1 says so

    def on_mount(self) -> None:
        area = self._box = self.query_one(ChatInput)  # kept: its text is still read as the app closes
        area.cursor_blink = self.shared.cursor_blink
        self.query_one("#messages", VerticalScroll).anchor()
        self.watch(self.app, "session_serial", self._session_changed)
        self.watch(self.app, "model_status", self._model_changed)
        self.watch(self.app, "settings_serial", self._settings_applied, init=False)
        self.watch(self.app, "prompt_serial", lambda _: self.call_after_refresh(self.refresh_preview), init=False)
        self.watch(self.app, "app_focus", self._app_focus_changed, init=False)
        area.focus()

    # -- where the keys go -----------------------------------------------------------------
    #
    # The rule: whenever this screen is shown and no dialog is open, typing goes to the box,
    # unless the person has just selected a message to act on it. Three things took the
    # focus away before: a selected message removed when the list is rebuilt (Textual then
    # focuses what came before it: the list itself), the terminal's focus lost on this
    # screen and found on another (Textual restores it only on the screen where it was
    # lost), and a message still selected when the person comes back from another screen.

    def on_screen_suspend(self) -> None:
        # By the time this runs the app shows what replaced this screen: a dialog over it
        # (the selection stays for when it closes) or another screen.
        self._left_for_dialog = self.app.current_mode == "chat"

    def on_screen_resume(self) -> None:
        if not self._left_for_dialog:
            self.focus_box()  # back from another screen: writing, not acting on an old selection
        else:
            self._keep_keys()

    def _app_focus_changed(self, focused: bool) -> None:
        if focused and self.is_current:
            self.call_after_refresh(self._keep_keys)  # after Textual restored what it could

    def _keep_keys(self) -> None:
        """The box takes the keys unless a message (or the box) has them already."""
        if self.is_current and self.app.app_focus and not isinstance(self.focused, (ChatInput, MessageView)):
            self.focus_box()

    def focus_box(self) -> None:
        self.query_one(ChatInput).focus(scroll_visible=False)

    # -- showing a chat ------------------------------------------------------------------

    def _session_changed(self, _serial: int) -> None:
        session = self.session
        if session is not self._session_seen:
            left, self._session_seen = self._session_seen, session
            if left is not None:
                self._leave(left, session)
        if session is None:
            return
        if self.shown_chat != session.chat_id:
            self.show_chat(session)
        else:
            self._update_title()  # renamed (Chats screen)

    def _leave(self, left: ChatSession, now: ChatSession | None) -> None:
        """The app opened another chat, or this one again: the reply being written stops (it is
        saved in its own chat), one waiting for the model is dropped, and the box's text is kept as
        the draft of the chat it was typed in."""
        if self.pending is not None:
            self.notify("the reply will not be written")
            if now is not None and now.chat_id == left.chat_id:
                self.pending = None
                self.sync()  # the same chat stays drawn: its waiting reply goes
        elif self.busy is not None:
            self.cancel_asked = True
            if self.turn is not None:
                self.turn.cancel()
        self.busy = None
        self.pending = None
        self.save_draft(session=left)

    def _settings_applied(self, _serial: int) -> None:
        """Settings were saved: the box takes the new keys, and the open chat is opened again with
        them (names, avatars, prompt), unless a reply is being written."""
        self.query_one(ChatInput).set_keys(self.shared.keymap)
        s = self.session
        if s is not None and self.busy is None:
            self.shown_chat = None  # drawn again even if it is the same chat
            self.cattery.open_chat(s.chat_id, switch=False)

    def show_chat(self, session: ChatSession) -> None:
        self.shown_chat = session.chat_id
        self.preview = None
        self.pending = None
        self.waiting_text = None
        self.turn_context = None
        self.draft_fit = None
        self.tokens_per_second = self.server_count = None
        box = self.query_one("#messages", VerticalScroll)
        box.remove_children()
        self.views = []
        # The newest messages first, for the first frame; the rest of the batch right after
        # (they are above, out of sight, when the chat opens).
        shown = self.shared.shown_messages
        n = len(session.messages)
        self.first_shown = max(0, n - min(shown, FIRST_FRAME_MESSAGES))
        views = [self._make_view(session, i, session.messages[i]) for i in range(self.first_shown, n)]
        if views:
            box.mount_all(views)
        self.views = views
        box.anchor()
        if n - self.first_shown < min(shown, n):
            self.call_after_refresh(self._show_rest, session.chat_id, max(0, n - shown))
        elif self.first_shown:
            box.mount(Button(self._earlier_label(), id="earlier"), before=views[0] if views else None)
        self._update_title()
        area = self.query_one(ChatInput)
        if self._box_chat != session.chat_id:  # the same chat drawn again (settings saved): what is typed stays
            area.text = session.draft
            area.move_cursor(area.document.end)
        self._box_chat = session.chat_id
        self.focus_box()  # a chat just opened: the keys are for writing in it
        self._show_status()
        self.refresh_preview()
        self._measure_soon()

    def _show_rest(self, chat_id: int, start: int) -> None:
        s = self.session
        if s is None or s.chat_id != chat_id or self.shown_chat != chat_id:
            return
        self.show_earlier(start, keep_bottom=True)

    def _earlier_label(self) -> str:
        return f"▲ {self.first_shown} earlier messages (Enter to show more)"

    def _update_title(self) -> None:
        s = self.session
        if s is not None:
            who = s.char_name if s.recipe.card is not None else "no character"
            if s.recipe.card is not None:  # another card of this name: "Seraphina (by Alice)" (issue 14)
                from app.session.namesakes import library_names

                mark = library_names(self.shared.ws.cards).mark(s.card_ref)
                who += f" ({mark})" if mark else ""
            self.query_one("#chat-title", Static).update(plain(f" {who} · {s.title}"))

    def _make_view(self, session: ChatSession, index: int, m: StoredMessage | None, role: str = "") -> MessageView:
        role = role or (m.role if m is not None else "assistant")
        speaker = session.speaker(index) if m is not None else session.char_name
        avatar = self.cattery.avatar_for(role)
        return MessageView(index, m, speaker, role, avatar, self.shared.image_mode)

    @on(Button.Pressed, "#earlier")
    def earlier_pressed(self) -> None:
        self.show_earlier()

    def show_earlier(self, start: int | None = None, *, keep_bottom: bool = False) -> None:
        """Mount older messages above the shown ones.

        `keep_bottom`: the rest of a chat that is opening, which must stay scrolled to its
        newest message. Releasing the anchor there (as a person's "show earlier" does, to
        stay where they read) left the list at whatever offset the first, half-done layout
        had, often the top: the last reply was out of sight until the terminal was resized.
        """
        s = self.session
        if s is None or not self.first_shown:
            return
        if start is None:
            start = max(0, self.first_shown - self.shared.shown_messages)
        views = [self._make_view(s, i, s.messages[i]) for i in range(start, self.first_shown)]
        box = self.query_one("#messages", VerticalScroll)
        if not keep_bottom:
            box.release_anchor()
        if self.views:
            box.mount_all(views, before=self.views[0])
        else:
            box.mount_all(views)
        self.views = views + self.views
        self.first_shown = start
        buttons = list(self.query("#earlier").results(Button))
        if start and buttons:
            buttons[0].label = self._earlier_label()
        elif start:
            box.mount(Button(self._earlier_label(), id="earlier"), before=self.views[0])
        else:
            for b in buttons:
                b.remove()
        self._apply_window()

    def sync(self) -> None:
        """Make the views match the stored messages (after any change), keeping what did not change."""
        s = self.session
        if s is None:
            return
        selected = self.focused if isinstance(self.focused, MessageView) else None
        msgs = s.messages
        self.first_shown = min(self.first_shown, len(msgs))
        wanted = msgs[self.first_shown :]
        wanted_ids = {m.id for m in wanted}
        by_id = {v.message_id: v for v in self.views if v.message_id is not None}
        placeholders = [v for v in self.views if v.message_id is None and not v.unsaved]
        unsaved = sorted((v for v in self.views if v.unsaved), key=lambda v: v.after)
        for v in self.views:
            if v.message_id is not None and v.message_id not in wanted_ids:
                v.remove()
        box = self.query_one("#messages", VerticalScroll)
        kept: list[MessageView] = []
        for offset, m in enumerate(wanted):
            index = self.first_shown + offset
            while unsaved and unsaved[0].after <= index:  # a reply that was not saved stays where it was written
                kept.append(unsaved.pop(0))
            view = by_id.get(m.id) or (placeholders.pop(0) if placeholders else None)
            if view is None:
                view = self._make_view(s, index, m)
                if kept:
                    box.mount(view, after=kept[-1])
                else:
                    first = next((v for v in self.views if v.message_id in wanted_ids or v.unsaved), None)
                    box.mount(view, before=first) if first is not None else box.mount(view)
            else:
                view.show(index, m)
            kept.append(view)
        kept.extend(unsaved)
        for p in placeholders:
            p.remove()
        if selected is not None and selected not in kept:
            self.focus_box()  # the selected message is gone: not the list, nor a neighbour by chance
        self.views = kept
        self._apply_window()

    def view_at(self, index: int) -> MessageView | None:
        return next((v for v in self.views if v.index == index and v.message_id is not None), None)

    # -- status --------------------------------------------------------------------------

    def _model_changed(self, status: ModelStatus) -> None:
        if status.state == "loading" and status.progress == 0.0 and self.busy not in (None, "waiting"):
            self.action_stop()  # another model is coming: the reply being written stops and is saved
        bar = self.query_one("#load-progress", ProgressBar)
        bar.set_class(status.state == "loading", "-shown")
        bar.update(progress=int(status.progress * 100))
        self._show_status()
        if status.state == "ready":
            self.refresh_preview()
            self._measure_soon()
            if self.pending is not None:
                kind, index = self.pending
                self.pending = None
                if self._sent_too_long():
                    self.busy = None
                    self.sync()
                    return
                self.run_worker(self.request_turn(kind, index, True), group="request")
        elif status.state == "failed" and self.pending is not None:
            self.pending = None
            self.busy = None
            self.sync()

    def _show_status(self) -> None:
        self.query_one(ModelLine).show(self.cattery.model_status)
        bar = self.query_one(StatusBar)
        if self.turn_context is not None:  # a turn is being written: its own numbers, not the last one's
            bar.show(self.turn_context, None, self.note, writing=True)
        else:
            bar.show(
                self.preview,
                self.tokens_per_second,
                self.note,
                draft=self.draft_fit,
                keys=self._context_keys(),
                server_count=self.server_count,
            )

    def _context_keys(self) -> str:
        """Where the context is changed in the app (never a command-line flag)."""
        return f"Models screen, {display(keys_of('app.models', self.shared.keymap))}"

    # -- will the message fit? ------------------------------------------------------------

    def _measure_soon(self) -> None:
        if self._measure_timer is not None:
            self._measure_timer.stop()
        self._measure_timer = self.set_timer(MEASURE_AFTER_S, self._measure_draft)

    def _measure_draft(self) -> None:
        s = self.session
        text = self.query_one(ChatInput).text.strip()
        # Not while a turn runs: counting needs the model's thread, which the turn holds (counted when it ends).
        if s is None or not s.ready or not text or self.busy is not None:
            if self.draft_fit is not None:
                self.draft_fit = None
                self._show_status()
            return
        self._measure_worker(s, text)

    @work(thread=True, exclusive=True, group="measure", exit_on_error=False)
    def _measure_worker(self, session: ChatSession, text: str) -> None:
        try:
            fit = session.measure(text)
        except CatteryError as exc:  # a template that cannot render it: said when it is sent
            log.info("counting the draft: %s", exc)
            fit = None
        self.post_message(DraftMeasured(session.chat_id, text, fit))

    def on_draft_measured(self, event: DraftMeasured) -> None:
        s = self.session
        if s is None or event.chat_id != s.chat_id or event.text != self.query_one(ChatInput).text.strip():
            return  # typed on since: a newer count is coming
        self.draft_fit = event.fit
        self._show_status()

    def _too_long(self, fit: MessageFit) -> str:
        room = max(0, fit.room)
        return (
            f"Not sent: your message is {fit.tokens:,} tokens and this context ({fit.n_ctx:,} tokens) has room for"
            f" {room:,} beside the character and the reply. Shorten it, or load the model with a larger context"
            f" ({self._context_keys()}); it stays in the box."
        )

    def _fits(self, text: str) -> bool:
        """Checked before sending: a message that can never fit stays in the box, with one notice."""
        s = self.session
        if s is None or not s.ready:
            return True  # counted when the model is there (`_sent_too_long`)
        try:
            fit = s.measure(text)
        except CatteryError:
            return True  # the turn says what is wrong with the prompt
        if fit is None or fit.fits:
            return True
        self.draft_fit = fit
        self._show_status()
        self.notify(self._too_long(fit), severity="warning", timeout=12)
        return False

    def _sent_too_long(self) -> bool:
        """A message sent while the model loaded, now counted: too long, it goes back into the box."""
        s = self.session
        sent, self.waiting_text = self.waiting_text, None
        if s is None or sent is None or not s.messages or s.messages[-1].id != sent[0]:
            return False
        try:
            fit = s.measure(sent[1])
        except CatteryError:
            return False
        if fit is None or fit.fits:
            return False
        with reported(self, outcome="it stays in the chat: edit it (e) or delete it (d)") as taken:
            s.delete(len(s.messages) - 1)
        if not taken.ok:
            return True
        area = self.query_one(ChatInput)
        area.text = sent[1] + ("\n" + area.text if area.text.strip() else "")
        area.move_cursor(area.document.end)
        self.notify(self._too_long(fit), severity="warning", timeout=12)
        return True

    def refresh_preview(self) -> None:
        s = self.session
        if s is not None and s.ready and self.busy is None:
            self._preview_worker(s)

    @work(thread=True, exclusive=True, group="preview", exit_on_error=False)
    def _preview_worker(self, session: ChatSession) -> None:
        try:
            preview = session.preview()
        except CatteryError as exc:
            self.post_message(PreviewReady(session.chat_id, None, str(exc)))
            return
        self.post_message(PreviewReady(session.chat_id, preview))

    def on_preview_ready(self, event: PreviewReady) -> None:
        if event.error:
            self.notify(event.error, severity="warning")
        if self.session is None or event.chat_id != self.session.chat_id:
            return
        self.preview = event.preview
        self._apply_window()
        self._show_status()

    def _apply_window(self) -> None:
        first_kept = self.preview.first_kept if self.preview is not None else 0
        for v in self.views:
            v.set_class(v.message_id is not None and v.index < first_kept, "-out")

    # -- turns ---------------------------------------------------------------------------

    @on(ChatInput.Submitted)
    async def send(self, event: ChatInput.Submitted) -> None:
        s = self.session
        if s is None:
            return
        if not event.text:  # Enter on an empty box: the character speaks again, as in SillyTavern
            await self.request_turn("speak")
            return
        if self.busy is not None:
            self._say_busy("reply")
            return
        if not self._fits(event.text):
            return  # said why; the message stays in the box
        with reported(self, outcome="not sent (the message stays in the box)") as saved:
            s.add_user(event.text)
        if not saved.ok:
            return  # the message stays in the box, to send again
        area = self.query_one(ChatInput)
        area.text = ""
        self.draft_fit = None
        self.save_draft()
        self.sync()
        if not s.ready and s.messages:
            self.waiting_text = (s.messages[-1].id, event.text)  # counted once the model is there
        await self.request_turn("reply")

    def _say_busy(self, kind: str) -> None:
        """A turn asked for while another is written: one line saying why nothing starts."""
        what = ASKED.get(kind, kind)
        stop = display(keys_of("chat.stop", self.shared.keymap))
        if self.busy == "waiting":
            self.notify(
                f"{what}: not while a reply waits for the model to load ({stop} cancels it)", severity="warning"
            )
        else:
            self.notify(f"{what}: not while a reply is being written ({stop} stops it)", severity="warning")

    async def request_turn(self, kind: str, index: int | None = None, resumed: bool = False) -> None:
        s = self.session
        if s is None:
            return
        if self.busy is not None and not resumed:
            self._say_busy(kind)
            return
        try:
            kind, target = s.plan_turn(kind, index)
        except CatteryError as exc:
            self.notify(str(exc), severity="warning")
            return
        status = self.cattery.model_status
        if not s.ready:
            if status.state == "loading":
                self.pending = (kind, target)
                self.busy = "waiting"
                await self._prepare_view(kind, target, "waiting")
                return
            self.notify(f"no model is loaded ({status.error or 'F4 chooses one'})", severity="error")
            return
        self.busy = kind
        self.cancel_asked = False
        self.serial += 1
        await self._prepare_stream(kind, target)
        # Impersonate goes on from what is typed in the box: a line begun is never thrown away.
        prefix = self.query_one(ChatInput).text if kind == "impersonate" else ""
        self.run_turn(s, kind, target, self.serial, prefix)

    async def _prepare_view(self, kind: str, target: int | None, note: str) -> MessageView | None:
        s = self.session
        assert s is not None
        if kind == "impersonate":
            return None
        if kind in ("reply", "speak"):
            view = next((v for v in self.views if v.message_id is None and not v.unsaved), None)
            if view is None:
                view = self._make_view(s, len(s.messages), None, "assistant")
                self.views.append(view)
                await self.query_one("#messages", VerticalScroll).mount(view)
        else:
            view = self.view_at(target) if target is not None else None
        if view is not None:
            view.set_writing(WRITING.get(note, note), another=kind == "regenerate")
            self.query_one("#messages", VerticalScroll).anchor()
        return view

    async def _prepare_stream(self, kind: str, target: int | None) -> None:
        view = await self._prepare_view(kind, target, kind)
        self.target = view
        self.stream = None
        if view is None:
            return
        self.stream = await view.stream(replace=kind == "regenerate")

    def _overflow_line(self) -> str:
        return (
            "the prompt does not fit in the context: shorten or delete the last message (select it with"
            f" {display(keys_of('chat.select', self.shared.keymap))}), or load the model with a larger"
            f" context ({self._context_keys()})"
        )

    @work(thread=True, group="turn", exit_on_error=False)
    def run_turn(self, session: ChatSession, kind: str, target: int | None, serial: int, prefix: str = "") -> None:
        try:
            turn = session.begin(kind, target, prefix=prefix)
        except ContextOverflowError:
            self.post_message(TurnDone(serial, None, self._overflow_line()))
            return
        except CatteryError as exc:
            self.post_message(TurnDone(serial, None, str(exc)))
            return
        except Exception as exc:  # shown on screen, never a crash
            log.exception("starting a turn")
            self.post_message(TurnDone(serial, None, f"{type(exc).__name__}: {exc}"))
            return
        self.post_message(TurnStarted(serial, turn))
        error = None
        try:
            for kind, text in turn.parts():  # a thinking model's block told apart, off the UI thread
                self.post_message(Piece(serial, text, kind))
        except CatteryError as exc:
            error = str(exc)
        except Exception as exc:
            log.exception("generating")
            error = f"{type(exc).__name__}: {exc}"
        try:
            outcome = session.finish(turn)  # committed here, the moment the reply ends
        except Exception as exc:  # a busy, full or read-only database; or a bug: the text is kept either way
            if isinstance(exc, ENVIRONMENT):
                why = error_line(exc, "save the reply")
            else:
                log.exception("saving a reply")
                why = f"{type(exc).__name__}: {exc}"
            text = split_reply(turn.generation.text, turn.markers, inside=turn.inside).answer
            text = (turn.prefix + text).rstrip() if turn.kind == "continue" else text.strip()
            note = f"the reply could not be saved ({why}); it stays on screen until you leave this chat"
            self.post_message(TurnDone(serial, None, note, unsaved=text if turn.kind != "impersonate" else ""))
            return
        self.post_message(TurnDone(serial, outcome, error))
        # Kept after the reply is shown done: a copy on the engine thread, queued on the keeper's;
        # the file is written on its writer. A turn sent meanwhile waits for the copy at most.
        self.cattery.keep_chat(session)

    def on_turn_started(self, event: TurnStarted) -> None:
        if event.serial != self.serial:
            event.turn.cancel()
            return
        self.turn = event.turn
        if self.cancel_asked:
            event.turn.cancel()
        if event.turn.markers is not None and self.target is not None:
            self.target.begin_thinking(event.turn.reasoning_before)
        self.turn_context = event.turn.context
        self._show_status()

    async def on_piece(self, event: Piece) -> None:
        if event.serial != self.serial:
            return
        if self.busy == "impersonate":
            area = self.query_one(ChatInput)
            area.insert(event.text, area.document.end)
            return
        if event.kind == "reasoning":
            if self.target is not None:
                self.target.add_thinking(event.text)
            return
        if self.stream is not None:
            await self.stream.write(event.text)

    def action_thoughts(self) -> None:
        """Unfold or fold the reasoning of the reply being written, else of the last one that has some."""
        views = [self.target] if self.target is not None else []
        views += [v for v in reversed(self.views) if v.role == "assistant"]
        for view in views:
            if view.toggle_thought():
                return
        self.notify("no reply here has a reasoning block", severity="information")

    async def on_turn_done(self, event: TurnDone) -> None:
        if event.serial != self.serial:
            return
        kind = self.busy
        if self.stream is not None:
            await self.stream.stop()
        self.stream = None
        self.turn = None
        self.turn_context = None
        self.busy = None
        if event.error:
            self.notify(event.error, severity="error", timeout=8)
        outcome = event.outcome
        if outcome is not None and outcome.stats is not None:
            self.tokens_per_second = outcome.stats.decode_tokens_per_second or self.tokens_per_second
            # What the server says it evaluated, beside the speed, until the next turn.
            remote = getattr(self.shared.engine.report, "remote", False)
            self.server_count = outcome.stats.prompt_evaluated if remote else None
        if kind == "impersonate":
            area = self.query_one(ChatInput)
            if outcome is not None:
                area.text = outcome.text
                area.move_cursor(area.document.end)
            self.focus_box()
        else:
            if event.unsaved:
                await self._keep_unsaved(event.unsaved)
            self.sync()
        self.target = None
        self._show_status()
        self.refresh_preview()
        self._measure_soon()

    async def _keep_unsaved(self, text: str) -> None:
        """A reply the store would not take stays on screen, marked "not saved", below the chat.

        A new reply's own view is kept as it is; a regenerated or continued one gets a
        view of its own, and the message it was written into shows its saved text again.
        """
        s = self.session
        if s is None:
            return
        after = len(s.messages)
        view = self.target
        if view is not None and view.message_id is None and not view.unsaved:
            view.mark_unsaved(text, after)
            return
        view = self._make_view(s, after, None, "assistant")
        view.mark_unsaved(text, after)
        self.views.append(view)
        await self.query_one("#messages", VerticalScroll).mount(view)

    # -- chat actions (keys and the command palette) ------------------------------------

    def action_stop(self) -> None:
        if self.pending is not None:
            self.pending = None
            self.busy = None
            self.sync()
            self.notify("the reply will not be written")
            return
        if self.busy is None:
            return
        self.cancel_asked = True
        if self.turn is not None:
            self.turn.cancel()

    async def action_regenerate(self) -> None:
        await self.request_turn("regenerate")

    async def action_continue_reply(self) -> None:
        await self.request_turn("continue")

    async def action_impersonate(self) -> None:
        await self.request_turn("impersonate")

    async def action_speak_again(self) -> None:
        await self.request_turn("speak")

    async def action_swipe(self, step: int) -> None:
        focused = self.focused
        if isinstance(focused, MessageView) and focused.message_id is not None:
            await self.swipe(focused.index, step)
        elif self.session is not None and self.session.messages:
            await self.swipe(len(self.session.messages) - 1, step)

    def action_new_chat(self) -> None:
        s = self.session
        if s is not None:
            self.cattery.new_chat(s.card_ref)

    def action_select_messages(self) -> None:
        real = [v for v in self.views if v.message_id is not None or v.unsaved]
        if real:
            real[-1].focus()
            real[-1].scroll_visible()

    def action_details(self) -> None:
        s = self.session
        if s is None:
            return
        focused = self.focused
        if isinstance(focused, MessageView) and focused.message_id is not None:
            self._details(focused.index)
            return
        last = next((i for i in range(len(s.messages) - 1, -1, -1) if s.messages[i].role == "assistant"), None)
        if last is not None:
            self._details(last)

    def _details(self, index: int) -> None:
        s = self.session
        assert s is not None
        m = s.messages[index]
        prov = m.swipes[m.active].provenance if m.swipes else {}
        title = f"{s.speaker(index)}, message {index + 1}" + (
            f", alternative {m.active + 1} of {len(m.swipes)}" if len(m.swipes) > 1 else ""
        )
        try:
            text = describe_provenance(prov, m.state)
        except (TypeError, ValueError, OverflowError, OSError):  # a row another tool wrote: shown as it is
            text = json.dumps(prov, ensure_ascii=False, default=str)[:4000]
        self.app.push_screen(TextScreen(title, text))

    @on(ChatInput.SelectLast)
    def select_last(self) -> None:
        self.action_select_messages()

    @on(ChatInput.Changed)
    def draft_changed(self) -> None:
        if self._draft_timer is not None:
            self._draft_timer.stop()
        self._draft_timer = self.set_timer(0.8, self.save_draft)
        self._measure_soon()

    def on_unmount(self) -> None:
        # Quitting: the last words typed (the timer waits for a pause) are kept for next time.
        # The app's own unmount comes too late: its screens are gone by then.
        self.save_draft(leaving=True)

    def save_draft(self, *, leaving: bool = False, session: ChatSession | None = None) -> None:
        """Keep the box's text as the draft of `session` (the chat shown, unless another replaced it)."""
        s = session or self.session
        box = self._box
        if s is None or box is None or (self.busy == "impersonate" and not leaving):
            return
        try:
            s.save_draft(box.text)
        except ENVIRONMENT as exc:  # the text stays in the box; only keeping it for next time failed
            line = error_line(exc, "save the draft")
            log.info("draft not saved: %s", line)
            if line != self._draft_error and self.is_attached:
                self.notify(f"the draft could not be saved: {line}", severity="warning", timeout=8)
            self._draft_error = line
            return
        self._draft_error = None

    # -- actions on one message ----------------------------------------------------------

    async def on_message_view_action(self, event: MessageView.Action) -> None:
        event.stop()
        view = event.view
        name = event.name
        if view.unsaved and name in ("copy", "back", "move"):
            pass  # a reply that was not saved can still be copied
        elif view.unsaved:
            self.notify("this reply was not saved: only copying it (c) works", severity="warning")
            return
        elif view.message_id is None:
            return
        if name == "move":
            self._move(view, event.step)
        elif name == "back":
            self.query_one(ChatInput).focus()
        elif name == "copy":
            self.app.copy_to_clipboard(view.text)
            self.notify("copied to the clipboard")
        elif name == "details":
            self._details(view.index)
        elif self.busy is not None:
            self.notify("wait for the reply to end (Esc stops it)", severity="warning")
        elif name == "swipe":
            await self.swipe(view.index, event.step)
        elif name == "edit":
            self.edit(view.index)
        elif name == "delete":
            self.delete(view.index)
        elif name == "delete_alternative":
            self.delete_alternative(view.index)
        elif name == "delete_after":
            self.delete(view.index, and_after=True)
        elif name == "branch":
            self.branch(view.index)

    async def action_on_message(self, action: str) -> None:
        """A message's action from the command palette: on the selected message, else the last."""
        view = self.focused if isinstance(self.focused, MessageView) else None
        if view is None:
            real = [v for v in self.views if v.message_id is not None]
            view = real[-1] if real else None
        if view is None:
            return
        name, _, arg = action.partition("(")
        step = int(arg.rstrip(")")) if arg else 0
        await self.on_message_view_action(MessageView.Action(view, name, step))

    def _move(self, view: MessageView, step: int) -> None:
        real = [v for v in self.views if v.message_id is not None or v.unsaved]
        pos = real.index(view) + step if view in real else len(real) - 1
        if pos >= len(real):
            self.query_one(ChatInput).focus()
            return
        if pos < 0:
            if self.first_shown:
                self.show_earlier()
            return
        real[pos].focus()
        real[pos].scroll_visible()

    async def swipe(self, index: int, step: int) -> None:
        s = self.session
        if s is None:
            return
        if self.busy is not None:
            self._say_busy("swipe")
            return
        with reported(self, outcome="the alternative shown was not changed") as done:
            moved = s.select_swipe(index, step)
        if not done.ok:
            return
        if moved is None:
            m = s.messages[index]
            last = index == len(s.messages) - 1
            if step > 0 and last and m.role == "assistant" and any(x.role == "user" for x in s.messages[:index]):
                await self.request_turn("regenerate", index)  # past the last alternative: write a new one
            return
        self.sync()
        self.refresh_preview()

    def edit(self, index: int) -> None:
        s = self.session
        assert s is not None

        def done(text: str | None) -> None:
            if text is None or s is not self.session or index >= len(s.messages):
                return
            if text != s.messages[index].text:
                with reported(self, outcome="the edit was not saved") as saved:
                    s.edit(index, text)
                if not saved.ok:  # the edit is not lost: the editor opens again with it
                    self.app.push_screen(EditScreen(title, text), done)
                    return
                self.sync()
                self.refresh_preview()

        title = f"Edit {s.speaker(index)}'s message"
        self.app.push_screen(EditScreen(title, s.messages[index].text), done)

    def delete(self, index: int, and_after: bool = False) -> None:
        s = self.session
        assert s is not None
        after = len(s.messages) - index - 1

        def go(yes: bool | None) -> None:
            if not yes or s is not self.session or index >= len(s.messages):
                return
            with reported(self, outcome="nothing was deleted") as deleted:
                gone = s.delete(index, and_after=and_after)
            if not deleted.ok:
                return
            self.sync()
            self.refresh_preview()
            self.notify(f"deleted {gone} message" + ("s" if gone != 1 else ""))
            real = [v for v in self.views if v.message_id is not None]
            target = next((v for v in real if v.index >= index), None) or (real[-1] if real else None)
            if target is not None and not and_after:
                target.focus()
            else:
                self.query_one(ChatInput).focus()

        alternatives = len(s.messages[index].swipes)
        if and_after and after > 0:
            question = f"Delete this message and the {after} after it?"
            self.app.push_screen(ConfirmScreen(question, "Delete"), go)
        elif alternatives > 1:  # more than what is shown goes: asked, with the way to delete only that one
            only = display(keys_of("message.delete_alternative", self.shared.keymap))
            question = (
                f"Delete this message with all {alternatives} of its alternatives? ({only} deletes only the one shown)"
            )
            self.app.push_screen(ConfirmScreen(question, "Delete all"), go)
        else:
            go(True)

    def delete_alternative(self, index: int) -> None:
        """Delete the alternative shown (a swipe), not the message; asked first, as SillyTavern does."""
        s = self.session
        assert s is not None
        m = s.messages[index]
        if len(m.swipes) < 2:
            whole = display(keys_of("message.delete", self.shared.keymap))
            self.notify(f"this is the message's only alternative: {whole} deletes the message", severity="warning")
            return
        message_id, shown = m.id, m.active

        def go(yes: bool | None) -> None:
            if not yes or s is not self.session or index >= len(s.messages):
                return
            now = s.messages[index]
            if now.id != message_id or now.active != shown:
                return  # the chat changed under the question: nothing is deleted by surprise
            with reported(self, outcome="nothing was deleted") as deleted:
                active, left = s.delete_alternative(index)
            if not deleted.ok:
                return
            self.sync()
            self.refresh_preview()
            self.notify(f"deleted alternative {shown + 1}; showing {active + 1} of {left}")
            view = self.view_at(index)
            if view is not None:
                view.focus()

        question = f"Delete alternative {shown + 1} of {len(m.swipes)} of this message?"
        self.app.push_screen(ConfirmScreen(question, "Delete"), go)

    def branch(self, index: int) -> None:
        s = self.session
        assert s is not None
        with reported(self, outcome="no branch was made") as made:
            new_id = s.branch(index)
        if not made.ok:
            return
        self.cattery.open_chat(new_id)
        self.notify(f"a new chat from message {index + 1}: {s.title} (branch)")
