"""What the screens share: the workspace, the open chat, the engine, the keys and the look.

The app owns one `TuiState` and is the only one to replace what it holds; a screen
reads it through `SharedState.shared` and asks the app to act through `Host`, the few
commands a screen needs. So no screen imports the App class (app/tui/app.py imports
the screens), and what a screen may touch is written down here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast, overload

if TYPE_CHECKING:
    from concurrent.futures import Future
    from pathlib import Path

    from textual.app import App
    from textual.await_complete import AwaitComplete

    from app.engine.engine import Engine
    from app.session.chat import ChatSession
    from app.session.kv_keeper import Kept, KVKeeper
    from app.session.launch import Launch
    from app.session.workspace import Workspace
    from app.tui.widgets.status_bar import ModelStatus

T = TypeVar("T")


@dataclass
class TuiState:
    ws: Workspace
    launch: Launch
    engine: Engine
    session: ChatSession | None = None
    keymap: dict[str, str] = field(default_factory=dict)
    # What was wrong with settings.toml (each value fell back to its default): shown once mounted.
    settings_warnings: list[str] = field(default_factory=list)
    start_notes: list[str] = field(default_factory=list)  # other problems found before the app started (run.py)
    image_mode: str = "auto"
    cursor_blink: bool = True
    shown_messages: int = 60
    keeper: KVKeeper | None = None  # chats' KV caches kept and put back (None: [snapshots] off)

    def read_settings(self) -> list[str]:
        """Keys and look from the settings as they are now; the [keys] entries that were left out, and why."""
        from app.tui.keys import read_keymap

        settings = self.ws.settings
        self.keymap, key_warnings = read_keymap(dict(settings.section("keys")), str(settings.path))
        ui = settings.ui
        self.image_mode, self.cursor_blink, self.shown_messages = ui.images, ui.cursor_blink, ui.shown_messages
        return key_warnings


class SharedField(Generic[T]):
    """An attribute of the app that is its `TuiState`'s: `app.session` is `app.shared.session`."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> SharedField[T]: ...
    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> T: ...
    def __get__(self, obj: object | None, objtype: type | None = None) -> T | SharedField[T]:
        if obj is None:
            return self
        return cast("T", getattr(obj.shared, self.name))  # type: ignore[attr-defined]

    def __set__(self, obj: object, value: T) -> None:
        setattr(obj.shared, self.name, value)  # type: ignore[attr-defined]


class Host(Protocol):
    """What a screen may ask of the app (CatteryApp is one)."""

    shared: TuiState
    model_status: ModelStatus
    session_serial: int

    def load_model(
        self, ref: Path | str | None, overrides: dict[str, Any] | None = None, fmt: str | None = None
    ) -> None: ...
    def cancel_load(self) -> None: ...
    def use_engine(self, name: str) -> None: ...
    def new_chat(self, card_ref: str | None, greeting: int = 0) -> None: ...
    def open_chat(self, chat_id: int, *, switch: bool = True) -> bool: ...
    def apply_settings(self) -> None: ...
    def avatar_for(self, role: str) -> bytes | None: ...
    def prompt_changed(self) -> None: ...
    def keep_chat(self, session: ChatSession) -> Future[Kept | None] | None: ...
    def switch_mode(self, mode: str) -> AwaitComplete: ...


class SharedState:
    """For a screen: the app as a `Host`, and the state the screens share."""

    if TYPE_CHECKING:

        @property
        def app(self) -> App[Any]: ...

    @property
    def cattery(self) -> Host:
        return cast("Host", self.app)

    @property
    def shared(self) -> TuiState:
        return self.cattery.shared
