"""The Cattery app: the screens as modes (F2…F6), the model loaded in the background, the chat
being shown, the keymap and the theme from the settings.

The app owns one engine and one chat session at a time, kept in a `TuiState`
(app/tui/state.py) that the screens read. Screens watch four of the app's reactive
attributes instead of being called: `model_status`, `session_serial` (the chat screen
stops its reply and keeps its draft when another chat replaces its own),
`settings_serial` and `prompt_serial` (lore or the Author's Note changed). Workers post
messages and never touch widgets.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen

from app.assets import asset_path
from app.engine.engine import Engine
from app.errors import CatteryError
from app.instance import line_chat_holding
from app.session.chat import ChatSession, chat_to_open, hash_model, open_session, start_session
from app.session.kv_keeper import Kept, KVKeeper, Restored
from app.session.launch import Launch
from app.session.workspace import ModelLoad, RememberedModelGone, Workspace
from app.tui.guard import ENVIRONMENT, error_line, reported
from app.tui.keys import bindings, key_table
from app.tui.messages import (
    ChatRestored,
    EngineConnected,
    EngineFailed,
    ModelLoaded,
    ModelLoadFailed,
    ModelLoading,
    Notice,
    PromptRebuilt,
)
from app.tui.safe_text import strip_controls_everywhere
from app.tui.screens.characters import CharactersScreen
from app.tui.screens.chat import ChatScreen
from app.tui.screens.chats import ChatsScreen
from app.tui.screens.hub import HubScreen
from app.tui.screens.models import ModelsScreen
from app.tui.screens.settings import SettingsScreen
from app.tui.screens.workshop import WorkshopScreen
from app.tui.state import SharedField, TuiState
from app.tui.widgets.status_bar import ModelStatus

log = logging.getLogger("cattery.tui")

SHOWN_WARNINGS = 4  # at start, as notifications; the Settings screen lists them all
OUTSIDE_CHANGES_EVERY = 2.0  # seconds between looks for chats changed by the command line beside the app


class CatteryApp(App[None]):
    TITLE = "Cattery"
    CSS_PATH = str(asset_path("styles", "cattery.tcss"))
    BINDINGS: ClassVar[list[Binding]] = bindings("app")
    MODES: ClassVar[dict[str, Any]] = {
        "chat": ChatScreen,
        "characters": CharactersScreen,
        "models": ModelsScreen,
        "chats": ChatsScreen,
        "settings": SettingsScreen,
        "hub": HubScreen,
        "workshop": WorkshopScreen,
    }
    DEFAULT_MODE = "chat"

    model_status: reactive[ModelStatus] = reactive(ModelStatus, always_update=True, init=False)
    session_serial: reactive[int] = reactive(0, always_update=True, init=False)
    settings_serial: reactive[int] = reactive(0, always_update=True, init=False)
    # What goes into the open chat's prompt beside its messages changed (a lorebook attached, the
    # Author's Note saved): the chat screen counts its context again.
    prompt_serial: reactive[int] = reactive(0, always_update=True, init=False)

    # The state the screens share, as the app's own attributes (tests and app/tui/run.py read them).
    ws: SharedField[Workspace] = SharedField()
    launch: SharedField[Launch] = SharedField()
    engine: SharedField[Engine] = SharedField()
    session: SharedField[ChatSession | None] = SharedField()
    keymap: SharedField[dict[str, str]] = SharedField()
    settings_warnings: SharedField[list[str]] = SharedField()
    start_notes: SharedField[list[str]] = SharedField()
    image_mode: SharedField[str] = SharedField()
    shown_messages: SharedField[int] = SharedField()

    def __init__(self, workspace: Workspace, launch: Launch | None = None, *, engine: Engine | None = None) -> None:
        strip_controls_everywhere()
        super().__init__()
        # The line printed on leaving (an error, a crash) stays one line whatever the terminal's width.
        self.error_console.soft_wrap = True
        self.shared = TuiState(workspace, launch or Launch(), engine or Engine(log_file=workspace.paths.llama_log))
        self.shared.keeper = KVKeeper.for_workspace(workspace, self.shared.engine)
        # The local engine while the app chats through a server (its model unloaded), for when the
        # user loads a model again; None while it is the engine in use.
        self._local: Engine | None = None
        self._before_engine = ModelStatus()  # what was in use while an engine connects: back to it on failure
        self.restored = Restored()  # what opening the chat shown put back in the KV cache
        self.restored_chat: int | None = None  # the chat `restored` is about
        self._load_cancel = threading.Event()
        key_warnings = self.shared.read_settings()
        self.settings_warnings = [*workspace.settings.warnings, *key_warnings]
        self._data_version: int | None = None  # the chat database as last seen (see _outside_changes)
        if self.engine.loaded and self.engine.report is not None:
            # A model loaded before the app started (tests, benchmarks), or a remote engine
            # connected (`--engine`): use it as it is.
            choice = workspace.chat_format(self.engine.report.path, self.engine.info, self.launch.format)
            self.set_reactive(
                CatteryApp.model_status,
                ModelStatus("ready", self.engine.report.path, 1.0, report=self.engine.report, choice=choice),
            )

    # -- start and stop ----------------------------------------------------------------

    def _handle_exception(self, error: Exception) -> None:
        """A bug: the person gets one line and the log's path, not a screen of traceback.

        Textual would print a traceback with locals (which may hold chat text) after
        leaving; tests (CATTERY_DEBUG=1) still get Textual's own handling, which re-raises.
        A CatteryError that got this far (a handler that should have caught it) is
        still the person's to fix: its own line, as the command line prints it.
        """
        from app.crash import debugging, report_crash

        if debugging():
            super()._handle_exception(error)
            return
        from rich.text import Text

        if isinstance(error, CatteryError):
            self._return_code = error.exit_code
            line = f"cattery: error: {error_line(error)}"
        else:
            self._return_code = 70
            line = f"cattery: internal error: {report_crash(error)}"
        self._exit_renderables.append(Text(line, no_wrap=True, overflow="ignore"))
        self._close_messages_no_wait()

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: Any = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every notification as plain text: its lines carry names, paths and errors from outside,
        where `[/]` would stop the app and `[@click=app.quit]` would make a link (app/tui/plain.py)."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    def on_mount(self) -> None:
        theme = self.ws.settings.ui.theme
        if theme in self.available_themes:
            self.theme = theme
        self.settings_warnings += self._theme_warning()
        self.set_keymap(self.keymap)
        self.show_start_warnings()
        try:
            self.ws.store  # noqa: B018 - opened here: a database that cannot be used at all is one line
        except CatteryError as exc:
            from rich.text import Text

            line = f"cattery: error: {error_line(exc)}"
            self.exit(return_code=exc.exit_code, message=Text(line, no_wrap=True, overflow="ignore"))
            return
        self._outside_changes()  # what the database is now; changes from here on are looked for
        self.open_initial_chat()  # attached at once when the model is ready (set_session)
        self.set_interval(OUTSIDE_CHANGES_EVERY, self._outside_changes)
        if self.model_status.state != "ready" and self.launch.load_model:
            self.load_model(self.launch.model, self.launch.load_overrides, self.launch.format)

    def _theme_warning(self) -> list[str]:
        theme = self.ws.settings.ui.theme
        if theme in self.available_themes:
            return []
        where = f"{self.ws.settings.path}: [ui] theme"
        return [f"{where}: {theme!r} is not a theme here (Ctrl+P lists them); using {self.theme}"]

    def show_start_warnings(self) -> None:
        """Each problem of settings.toml once, as a warning; past a few, where to read the rest."""
        for line in self.start_notes:
            self.notify(line, severity="warning", timeout=15)
        warnings = self.settings_warnings
        for line in warnings[:SHOWN_WARNINGS]:
            self.notify(line, severity="warning", timeout=15)
        if len(warnings) > SHOWN_WARNINGS:
            rest = len(warnings) - SHOWN_WARNINGS
            self.notify(f"and {rest} more problems in the settings file: F6 lists them", severity="warning", timeout=15)

    def watch_theme(self, theme: str) -> None:
        if self.is_mounted and theme != self.ws.settings.ui.theme:
            self.ws.settings.set("ui", "theme", theme)
            problem = self.ws.save_settings()
            if problem:
                self.notify(problem, severity="warning")

    def on_unmount(self) -> None:
        # The chat screen keeps its own draft as it unmounts: by now the screens are gone.
        self.engine.cancel()
        keeper = self.shared.keeper
        if keeper is not None:
            if self.session is not None and self.session.ready:
                keeper.keep_soon(self.session)  # quitting keeps the chat's cache for the next start
            keeper.close()

    def get_screen_stack(self, mode: str) -> list[Screen[Any]]:
        return list(self._screen_stacks.get(mode, []))

    # -- chats ---------------------------------------------------------------------------

    def _session_kwargs(self) -> dict[str, Any]:
        la = self.launch
        return {
            "sampler": la.sampler,
            "system": la.system,
            "user": la.user,
            "char": la.char,
            "lorebooks": la.lorebooks,
            "lore_placement": la.lore_placement,
            "note": la.note,  # the command line's Author's Note: for the chat opened first only (set_session)
        }

    def session_overrides(self) -> dict[str, Any]:
        """What the command line asked for this run's chats (system, names, lorebooks), to build a recipe again."""
        return {k: v for k, v in self._session_kwargs().items() if k not in ("sampler", "note")}

    def prompt_changed(self) -> None:
        """Lore or the Author's Note of the open chat changed; the chat screen, watching
        `prompt_serial`, counts the next prompt again."""
        self.prompt_serial += 1

    def open_initial_chat(self) -> None:
        """The last chat as it was; --chat ID that one; with --card, that character's last chat;
        --new starts one (`session/chat.chat_to_open`, as the line chat chooses)."""
        la = self.launch
        card = la.card_ref if la.card_explicit else None
        chat_id: int | None = None
        with reported(self, severity="warning"):
            chat_id = chat_to_open(self.ws, chat=la.chat_id, by_card=la.card_explicit, card_ref=card, new=la.new_chat)
        holder = line_chat_holding(self.ws.paths.data_dir, chat_id) if chat_id is not None else None
        if holder is not None:
            self.notify(f"chat {chat_id} is open in {holder.where()}; starting a new chat", severity="warning")
        elif chat_id is not None:
            try:
                self.set_session(open_session(self.ws, chat_id, **self._session_kwargs()))
                return
            except ENVIRONMENT as exc:
                self.notify(f"{error_line(exc)}; starting a new chat", severity="warning", timeout=10)
        self.new_chat(card if la.card_explicit else self._default_card())

    def _default_card(self) -> str | None:
        try:
            ref, _ = self.ws.resolve_character(self.ws.default_character())
        except ENVIRONMENT as exc:
            self.notify(error_line(exc), severity="warning")
            return None
        return ref

    def new_chat(self, card_ref: str | None, greeting: int = 0) -> None:
        try:
            session = start_session(self.ws, card_ref, greeting=greeting, **self._session_kwargs())
        except ENVIRONMENT as exc:
            self.notify(error_line(exc), severity="error", timeout=10)
            return
        self.set_session(session)

    def open_chat(self, chat_id: int, *, switch: bool = True) -> bool:
        holder = line_chat_holding(self.ws.paths.data_dir, chat_id)
        if holder is not None:  # two writers would mix its messages
            self.notify(f"chat {chat_id} is open in {holder.where()}: leave it there first", severity="error")
            return False
        try:
            session = open_session(self.ws, chat_id, **self._session_kwargs())
        except ENVIRONMENT as exc:
            self.notify(error_line(exc), severity="error", timeout=10)
            return False
        self.set_session(session, switch=switch)
        return True

    def set_session(self, session: ChatSession, *, switch: bool = True) -> None:
        """Open `session`; the chat screen, told by `session_serial`, stops the last one's reply and keeps its draft."""
        left = self.session
        if left is not None and left is not session and left.chat_id != session.chat_id:
            self.keep_chat(left)  # the chat left keeps its KV cache (after its reply is stopped)
        self.session = session
        session.on_title = self._title_changed
        self.launch.note = None  # saved with the first chat; the next ones keep their own
        for warning in session.recipe.lore.warnings if session.recipe.lore is not None else []:
            self.notify(warning, severity="warning", timeout=10)
        # The chat is open; only reopening it next time is lost.
        with reported(self, severity="warning", outcome="this chat will not be the one opened next time"):
            self.ws.store.set_state("last_chat", str(session.chat_id))
        if self.model_status.state == "ready":
            self._attach(session)
        if switch and self.current_mode != "chat":
            self.switch_mode("chat")
        self.session_serial += 1

    def _title_changed(self) -> None:
        """The open chat's automatic title followed its first exchange (maybe on a worker thread,
        which must not wait for the UI): the header and the chat list show it."""
        self.call_later(self._bump_session_serial)

    def _bump_session_serial(self) -> None:
        self.session_serial += 1

    def _outside_changes(self) -> None:
        """Chats made, renamed or deleted beside the app (`cattery chats …`, an import) show up in the
        chat list and the header without a restart; SQLite's data_version says when, for a few µs."""
        try:
            version = self.ws.store.data_version()
        except CatteryError:
            return
        seen, self._data_version = self._data_version, version
        if seen is None or version == seen:
            return
        s = self.session
        if s is not None:
            # A chat deleted outside: sending into it says so (app/chats/store.py).
            with contextlib.suppress(CatteryError):
                s.refresh_title()
        self.session_serial += 1

    def _attach(self, session: ChatSession | None) -> None:
        if session is None or self.model_status.choice is None:
            return
        try:
            session.attach(self.engine, self.model_status.choice)
        except CatteryError as exc:
            self.notify(error_line(exc), severity="error")
            return
        if self.shared.keeper is not None:
            self._restore(session)

    def _restore(self, session: ChatSession) -> None:
        """The chat's kept KV cache put back on the keeper's thread (a file read there, the import
        a job on the engine thread), after the keep of the chat left: its next turn evaluates only
        what is new."""
        keeper = self.shared.keeper
        assert keeper is not None

        def done(future: Future[Restored]) -> None:
            try:
                restored = future.result()
            except Exception:
                log.exception("restoring a chat's KV cache")
                return
            self.post_message(ChatRestored(session.chat_id, restored))

        keeper.restore_soon(session).add_done_callback(done)

    def on_chat_restored(self, event: ChatRestored) -> None:
        r = event.restored
        if event.chat_id == self.restored_chat and not r.tokens and not r.note:
            return  # asked again for the chat restored already: its cache is in place, say what was put back
        self.restored, self.restored_chat = r, event.chat_id
        if event.restored.tokens:
            self.prompt_changed()  # the meter's "next turn" counts what is cached now
        if event.restored.note:
            self.notify(event.restored.note, severity="warning", timeout=8)

    def keep_chat(self, session: ChatSession) -> Future[Kept | None] | None:
        """Keep the chat's KV cache (any thread): in order with the restores, on the keeper's own
        thread; a big save's size, or a state too big for the disk, is said in a notice."""
        keeper = self.shared.keeper
        if keeper is None or not session.ready:
            return None

        def done(future: Future[Kept | None]) -> None:
            try:
                kept = future.result()
            except Exception:
                log.exception("keeping a chat's KV cache")
                return
            if kept is not None and kept.notice:
                self.post_message(Notice(kept.notice))

        future = keeper.keep_soon(session)
        future.add_done_callback(done)
        return future

    def on_notice(self, event: Notice) -> None:
        self.notify(event.text, severity=event.severity, timeout=8)

    def avatar_for(self, role: str) -> bytes | None:
        """The character's picture for its messages; the persona's for the user's (none yet)."""
        s = self.session
        if s is None or role != "assistant" or s.recipe.source is None:
            return None
        return s.recipe.source.avatar

    # -- the model -------------------------------------------------------------------------

    def load_model(
        self, ref: Path | str | None, overrides: dict[str, Any] | None = None, fmt: str | None = None
    ) -> None:
        """Load a model in the background; the chat stays usable (a reply waits for it). While the app
        chats through a server, this goes back to the local engine."""
        if self.model_status.state == "loading" and self.model_status.engine:
            self.notify(f"connecting to engine {self.model_status.engine}: wait, or cancel it", severity="warning")
            return
        try:
            plan = self.ws.model_load(ref, overrides, fmt)  # with what the Models screen chose for this file
            plan.options.validate()
        except ENVIRONMENT as exc:
            line = error_line(exc)
            if isinstance(exc, RememberedModelGone):  # say how to go on, in the app's own terms
                line += "; choose another on the Models screen (F4)"
            self.model_status = ModelStatus("failed", None, error=line)
            return
        if self.session is not None:
            self.session.detach()
        if self.is_remote:
            self._switch_engine(self._local or Engine(log_file=self.ws.paths.llama_log))
            self._local = None
        self._load_cancel.clear()
        self.model_status = ModelStatus("loading", plan.path, 0.0)  # the chat screen stops a reply being written
        self._load_worker(plan)

    @property
    def is_remote(self) -> bool:
        return bool(getattr(self.engine.report, "remote", False))

    # -- engines: inference servers named in the settings ----------------------------------

    def use_engine(self, name: str) -> None:
        """Chat through the engine named `name` in the settings, connected in the background: the
        model or engine in use stays until it answers, and stays if it cannot be used."""
        if self.model_status.state == "loading":
            self.notify("a model or engine is being loaded: wait, or cancel it first", severity="warning")
            return
        self._before_engine = self.model_status
        self._load_cancel.clear()
        self.model_status = ModelStatus("loading", None, 0.0, engine=name)  # the chat screen stops a reply
        self._engine_worker(name)

    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def _engine_worker(self, name: str) -> None:
        from app.session.engines import remote_engine

        engine = None
        try:
            engine = remote_engine(self.ws, name)
            engine.connect()
            choice = self.ws.chat_format(None, engine.info)
        except ENVIRONMENT as exc:
            if engine is not None:
                engine.close()
            self.post_message(EngineFailed(name, error_line(exc, "connect to the engine")))
            return
        if self._load_cancel.is_set():
            engine.close()
            self.post_message(EngineFailed(name, "connecting was cancelled"))
            return
        self.post_message(EngineConnected(name, engine, choice))

    def on_engine_failed(self, event: EngineFailed) -> None:
        self.model_status = self._before_engine  # what was in use goes on
        self.notify(f"engine {event.name}: {event.error}", severity="error", timeout=12)

    def on_engine_connected(self, event: EngineConnected) -> None:
        from app.tui.wording import in_app

        status = self.model_status
        if status.state != "loading" or status.engine != event.name:  # cancelled meanwhile
            self._unload_worker(event.engine, close=True)
            return
        if self.session is not None:
            self.session.detach()
        if self.is_remote:
            self._switch_engine(event.engine)
        else:
            local = self.engine
            self._switch_engine(event.engine, close_old=False)
            self._local = local
            self._unload_worker(local)  # its memory goes while the server chats
        report, choice = event.engine.report, event.choice
        for warning in report.warnings + ([choice.warning] if choice.warning else []):
            self.notify(in_app(warning), severity="warning", timeout=10)
        self.model_status = ModelStatus("ready", None, 1.0, report=report, choice=choice)
        self._attach(self.session)

    def _switch_engine(self, engine: Any, *, close_old: bool = True) -> None:
        old = self.engine
        self.shared.engine = engine
        if self.shared.keeper is not None:
            self.shared.keeper.use_engine(engine)
        if close_old and old is not engine:
            self._unload_worker(old, close=True)

    @work(thread=True, group="unload", exit_on_error=False)
    def _unload_worker(self, engine: Any, close: bool = False) -> None:
        """A replaced engine let go off the UI thread: a local model's memory freed, a stream closed."""
        try:
            engine.close() if close else engine.unload()
        except Exception:
            log.exception("letting an engine go")

    def engines(self) -> list[Any]:
        """The engines to close at the end: the one in use, and the local one while a server is."""
        return [self.engine, *([self._local] if self._local is not None else [])]

    def cancel_load(self) -> None:
        self._load_cancel.set()
        if self.model_status.state == "loading" and self.model_status.engine:
            self.model_status = self._before_engine  # the connection's answer is dropped when it comes

    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def _load_worker(self, plan: ModelLoad) -> None:
        path = plan.path
        last = [0.0]

        def progress(value: float) -> bool:
            now = time.monotonic()
            if now - last[0] > 0.05 or value >= 1.0:
                last[0] = now
                self.post_message(ModelLoading(path, value))
            return not self._load_cancel.is_set()

        leaving = self.session
        if leaving is not None:
            kept = self.keep_chat(leaving)  # the cache of the model being replaced, for when it comes back
            if kept is not None:
                kept.result()
        try:
            report = self.engine.load(path, plan.options, default_ctx=plan.default_ctx, progress=progress)
            choice = self.ws.chat_format(path, self.engine.info, plan.format)
            session = self.session
            if session is not None:
                session.attach(self.engine, choice)
        except CatteryError as exc:
            message = "loading was cancelled" if self._load_cancel.is_set() else error_line(exc)
            self.post_message(ModelLoadFailed(path, message))
            return
        except OSError as exc:  # a file or folder the load needs (the model, its log) cannot be used
            self.post_message(ModelLoadFailed(path, error_line(exc, "load the model")))
            return
        except Exception as exc:
            log.exception("loading a model")
            self.post_message(ModelLoadFailed(path, f"{type(exc).__name__}: {exc}"))
            return
        self.post_message(ModelLoaded(path, report, choice, session))

    def on_model_loading(self, event: ModelLoading) -> None:
        path = event.path
        if self.model_status.state == "loading" and self.model_status.path == path:
            self.model_status = ModelStatus("loading", path, event.progress)

    def on_model_load_failed(self, event: ModelLoadFailed) -> None:
        from app.tui.wording import about_file

        path, message = event.path, event.error
        self.model_status = ModelStatus("failed", path, error=message)
        self.notify(about_file(path, message), severity="error", timeout=12)  # the file named once

    def on_model_loaded(self, event: ModelLoaded) -> None:
        path, report, choice = event.path, event.report, event.choice
        if event.attached is not self.session:
            self._attach(self.session)
        elif self.session is not None and self.shared.keeper is not None:
            self._restore(self.session)
        from app.tui.wording import in_app

        for warning in report.warnings + ([choice.warning] if choice.warning else []):
            self.notify(in_app(warning), severity="warning", timeout=10)
        self.model_status = ModelStatus("ready", path, 1.0, report=report, choice=choice)
        problem = self.ws.remember_model(path)
        if problem:
            self.notify(problem, severity="warning")
        self._hash_worker(path)

    @work(thread=True, group="hash", exit_on_error=False)
    def _hash_worker(self, path: Path) -> None:
        """The model's SHA-256 for the replies' provenance: read once per file, then cached."""
        try:
            hash_model(self.ws.store, path)
        except (OSError, CatteryError) as exc:
            log.warning("hashing %s: %s", path, exc)

    def apply_settings(self) -> None:
        """Use saved settings at once: keys, look, and the open chat's prompt and sampler."""
        key_warnings = self.shared.read_settings()
        self.settings_warnings = [*self.ws.settings.warnings, *key_warnings, *self._theme_warning()]  # as saved
        self.set_keymap(self.keymap)
        if self.launch.sampler is not None:
            self.launch.sampler = None  # the command line's sampler was for that run; the settings win now
        # The chat screen takes the keys and opens its chat again (names and avatars may have changed).
        self.settings_serial += 1

    # -- help and the command palette ----------------------------------------------------

    def action_help(self) -> None:
        from app.tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    # -- World Info and the Author's Note (the open chat's) ---------------------------------

    def _dialog_allowed(self) -> bool:
        from textual.screen import ModalScreen

        if self.session is None:
            self.notify("no chat is open", severity="warning")
            return False
        return not isinstance(self.screen, ModalScreen)  # one dialog at a time

    def action_world_info(self) -> None:
        from app.tui.screens.lore import WorldInfoScreen

        if self._dialog_allowed():
            self.push_screen(WorldInfoScreen())

    def action_authors_note(self) -> None:
        from app.tui.screens.authors_note import AuthorsNoteScreen

        s = self.session
        if s is None or not self._dialog_allowed():
            return
        who = s.char_name if s.recipe.card is not None else "no character"

        def done(result: Any) -> None:
            if result is None or s is not self.session:
                return
            with reported(self, outcome="the Author's Note was not saved") as saved:
                s.set_note(result)
            if not saved.ok:
                return
            note = s.note
            self.notify(f"{note.describe()} (saved with this chat)" if note is not None else "Author's Note removed")
            self.prompt_changed()

        self.push_screen(AuthorsNoteScreen(f"Author's Note · {who} · {s.title}", s.note, s.history()), done)

    def action_thinking(self) -> None:
        from app.tui.screens.thinking import ThinkingScreen, format_line

        s = self.session
        if s is None or not self._dialog_allowed():
            return
        builder = s.builder
        choice = self.model_status.choice
        about = format_line(builder.reasoning if builder is not None else None, choice.name if choice else "?")

        def done(result: Any) -> None:
            if result is None or s is not self.session:
                return
            with reported(self, outcome="the thinking choices were not saved") as saved:
                s.set_thinking(keep=result.keep, enabled=result.enabled, budget=result.budget)
            if not saved.ok:
                return
            budget = f", budget {result.budget} tokens" if result.budget else ""
            self.notify(
                f"thinking {'on' if result.enabled else 'off'}, reasoning "
                f"{'kept in' if result.keep else 'left out of'} later prompts{budget} (saved with this chat)"
            )
            self.prompt_changed()  # the next prompt's size changes with the reasoning kept or not

        self.push_screen(ThinkingScreen(f"Thinking · {s.title}", s.thinking, about), done)

    def action_system_preset(self) -> None:
        from app.prompt.presets import available_presets
        from app.session.system_prompt import character_preset, chat_preset
        from app.tui.screens.system_preset import SystemPresetScreen

        s = self.session
        if s is None or not self._dialog_allowed():
            return
        ws = self.ws
        with reported(self, "read the system-prompt presets") as read:
            presets = list(available_presets().values())
            chosen = [
                ("chat", chat_preset(ws, s.chat_id)),
                ("character", character_preset(ws, s.card_ref)),
                ("settings", ws.settings.chat.system_preset),
            ]
        if not read.ok:
            return
        scope, current = next(((sc, name) for sc, name in chosen if name), ("chat", ""))
        card = s.recipe.source
        own = card is not None and bool(str(card.data.get("system_prompt", "")).strip())
        note = "The chat's prompt is rebuilt from it at once."
        if own and ws.settings.chat.prefer_card_prompt:
            note = (
                f"{s.char_name}'s card has its own system prompt, which wins ([chat] prefer_card_prompt); the "
                "preset is what {{original}} in it stands for. " + note
            )

        def done(result: Any) -> None:
            if result is None or s is not self.session:
                return
            self._store_preset(s, result.scope, result.name)

        title = f"System prompt · {s.title}"
        self.push_screen(SystemPresetScreen(title, presets, current, scope, s.card_ref is not None, note), done)

    @work(thread=True, group="recipe", exit_on_error=False)
    def _store_preset(self, s: ChatSession, scope: str, name: str) -> None:
        """Stores the choice, then rebuilds the chat's recipe (which waits for the model's tokenizer)."""
        from app.session.chat import fresh_recipe
        from app.session.system_prompt import set_character_preset, set_chat_preset, set_default_preset

        try:
            if scope == "chat":
                set_chat_preset(self.ws, s.chat_id, name)
            elif scope == "character" and s.card_ref:
                set_character_preset(self.ws, s.card_ref, name)
            else:
                problem = set_default_preset(self.ws, name)
                if problem:
                    raise CatteryError(problem)
            recipe = fresh_recipe(self.ws, s, **self.session_overrides())
            s.use_recipe(recipe)
        except ENVIRONMENT as exc:
            self.post_message(Notice(f"the system prompt was not changed: {error_line(exc)}", "error"))
            return
        where = {"chat": "this chat", "character": "this character"}.get(scope, "every chat")
        chosen = f"system prompt {name}" if name else "the settings' system prompt"
        self.post_message(Notice(f"{chosen} for {where}", "information"))
        self.post_message(PromptRebuilt())

    def on_prompt_rebuilt(self, event: PromptRebuilt) -> None:
        self.prompt_changed()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for a in key_table()["app"]:
            if a.id != "app.quit":
                yield SystemCommand(a.text, f"{a.text} ({a.id})", self._runner(a.action))
        section = getattr(screen, "KEY_SECTION", None)
        if section:
            for a in key_table()[section]:
                yield SystemCommand(a.text, a.id, self._runner(a.action, screen))
        if section == "chat":  # a message's actions: on the selected message, else the last one
            for a in key_table()["message"]:
                if a.id not in ("message.previous", "message.next", "message.back"):
                    yield SystemCommand(f"Message: {a.text}", a.id, self._runner(f"on_message('{a.action}')", screen))

    def _runner(self, action: str, screen: Screen[Any] | None = None) -> Any:
        def run() -> None:
            target = self if action.startswith("app.") or screen is None else screen
            self.call_later(self.run_action, action.removeprefix("app."), target)

        return run
