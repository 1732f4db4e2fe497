"""The workshop: run a build recipe, or quantize a model of the library, with a progress bar.

The work runs in a thread worker that posts its progress and its end as messages
(it never waits for the screen), and Esc asks it to stop (the converters write under
temporary names, so a stopped run leaves no file under a final name).

What `cattery quantize` and `cattery build` take as flags are controls here: the type
(every type llama.cpp has), an importance matrix, "Allow requantizing" and "Overwrite".
A model that is already quantized is marked as such in the list, and quantizing it is
refused with the reason until "Allow requantizing" is on, as the command refuses it
without `--allow-requantize`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Checkbox, Footer, Input, Label, ProgressBar, Select, Static

from app.errors import CatteryError
from app.progress import Meter
from app.tui.guard import ENVIRONMENT, error_line, reported
from app.tui.keys import bindings
from app.tui.plain import cell, plain
from app.tui.screens.dialogs import PathSuggester
from app.tui.screens.fitted import FittedScreen
from app.tui.state import SharedState

if TYPE_CHECKING:
    from app.hub.library import LibraryEntry

DEFAULT_TYPE = "Q4_K_M"
ALLOW = "“Allow requantizing”"
OVERWRITE = "“Overwrite”"


class Stopped(CatteryError):
    exit_code = 130


@dataclass(frozen=True)
class Source:
    """A model of the library as a source for quantizing: is it quantized already?"""

    entry: LibraryEntry
    file_type: str | None = None  # None: not read yet, or unreadable
    quantized: bool | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        name = f"{self.entry.name}  ({self.entry.source})"
        if self.error:
            return f"{name} · unreadable"
        if self.quantized:
            return f"{name} · {self.file_type}, already quantized"
        return f"{name} · {self.file_type}" if self.file_type else name


def is_quantized_type(file_type: str) -> bool | None:
    """Whether a GGUF of this file type holds quantized weights (F32/F16/BF16 do not); None if unknown."""
    from converters.quant_types import is_quantized, lookup

    try:
        return is_quantized(lookup(file_type).default)
    except CatteryError:
        pass
    try:
        return is_quantized(file_type.upper())  # a tensor type, from a file without general.file_type
    except KeyError:
        return None


def type_options() -> list[tuple[str, str]]:
    """Every type llama.cpp makes, with its bits per weight and whether it needs an importance matrix."""
    from converters.quant_types import all_types

    out = []
    for qt in all_types():
        needs = " · needs an importance matrix" if qt.imatrix else ""
        out.append((f"{qt.name}  {qt.bpw:.2f} bits/weight{needs}", qt.name))
    return out


class HeadersRead(Message):
    """Whether each model of the library is quantized, from its header."""

    def __init__(self, read: list[Source]) -> None:
        super().__init__()
        self.read = read


class WorkProgress(Message):
    def __init__(self, done: int, total: int, what: str, nbytes: int, total_bytes: int) -> None:
        super().__init__()
        self.done = done
        self.total = total
        self.what = what
        self.nbytes = nbytes
        self.total_bytes = total_bytes


class StageReached(Message):
    """A build's next stage (download, merge, convert, quantize)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class WorkEnded(Message):
    """The build or quantizing ended: the model made, or the error line."""

    def __init__(self, result: Path | None, error: str | None) -> None:
        super().__init__()
        self.result = result
        self.error = error


class WorkshopScreen(SharedState, FittedScreen):
    KEY_SECTION = "workshop"
    BINDINGS: ClassVar[list[Binding]] = bindings("workshop")

    def __init__(self) -> None:
        super().__init__()
        self.stop = threading.Event()
        self.running: str | None = None
        self.result: Path | None = None
        self.started = 0.0
        self.meter = Meter()
        self.where = "app"  # how core messages are worded: "build" while a recipe runs
        self.sources: dict[str, Source] = {}
        self._read: dict[tuple[str, int, int], Source] = {}  # (path, size, mtime) → what its header said

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="workshop-body"):
            yield Static("Build a model from a recipe", classes="pane-title")
            yield Static(
                "download → merge → GGUF → quantized files in the model library"
                " (`cattery build`; the README has an example)",
                classes="muted",
            )
            with Horizontal(classes="row"):
                yield Input(placeholder="~/recipes/my-merge.toml", id="recipe", suggester=PathSuggester(), compact=True)
                yield Button("Build", variant="primary", id="build", compact=True)
            yield Static("Quantize a model of the library", classes="pane-title")
            with Grid(classes="form"):
                yield Label("Model")
                yield Select([], id="quant-model", prompt="a model of the library", compact=True)
                yield Label("Type")
                yield Select(type_options(), value=DEFAULT_TYPE, id="quant-type", allow_blank=False, compact=True)
                yield Label("Importance matrix")
                yield Input(
                    placeholder="optional: a file from llama-imatrix",
                    id="imatrix",
                    suggester=PathSuggester(),
                    compact=True,
                )
            yield Static("", id="quant-note", classes="muted")
            with Horizontal(classes="switches"):
                yield Checkbox("Allow requantizing (loses quality)", id="allow-requantize", compact=True)
                yield Checkbox("Overwrite earlier results", id="overwrite", compact=True)
            with Horizontal(classes="buttons"):
                yield Button("Quantize", variant="primary", id="quantize", compact=True)
                yield Button("Stop", id="stop", disabled=True, compact=True)
                yield Button("Load the result", id="load-result", disabled=True, compact=True)
            yield ProgressBar(id="work-progress", total=100, show_eta=False)
            yield Static("", id="work-stage")
            yield Static("", id="work-state")
        yield Footer(compact=True, show_command_palette=False)  # Ctrl+P: F1 says so

    def on_mount(self) -> None:
        self.refresh_models()

    def on_screen_resume(self) -> None:
        self.refresh_models()

    # -- the models to quantize -----------------------------------------------------------

    def refresh_models(self) -> None:
        """List the library at once; whether each model is quantized comes from its header, read in a worker."""
        with reported(self, "read the models folder") as listed:
            entries = self.shared.ws.models()
        if not listed.ok:
            return
        sources: dict[str, Source] = {}
        for e in entries:
            key = self._key(e.path)
            seen = self._read.get(key) if key is not None else None
            sources[str(e.path)] = Source(e, seen.file_type, seen.quantized, seen.error) if seen else Source(e)
        self.sources = sources
        self._show_sources()
        unread = [s.entry for s in self.sources.values() if s.file_type is None and s.error is None]
        if unread:
            self.read_headers(unread)

    @staticmethod
    def _key(path: Path) -> tuple[str, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (str(path), st.st_size, st.st_mtime_ns)

    @work(thread=True, exclusive=True, group="workshop-models", exit_on_error=False)
    def read_headers(self, entries: list[LibraryEntry]) -> None:
        from app.engine.metadata import read_model_info

        read: list[Source] = []
        for e in entries:
            try:
                file_type = read_model_info(e.path).file_type
            except ENVIRONMENT as exc:
                read.append(Source(e, error=error_line(exc, "read the model")))
                continue
            quantized = is_quantized_type(file_type) if file_type else None
            read.append(Source(e, file_type, quantized))
        self.post_message(HeadersRead(read))

    def on_headers_read(self, event: HeadersRead) -> None:
        for src in event.read:
            key = self._key(src.entry.path)
            if key is not None:
                self._read[key] = src
            if str(src.entry.path) in self.sources:
                self.sources[str(src.entry.path)] = src
        self._show_sources()

    def _show_sources(self) -> None:
        """Sources first (F32, F16, BF16), then the quantized ones, each marked with why."""
        select = self.query_one("#quant-model", Select)
        current = select.value
        ordered = sorted(self.sources.values(), key=lambda s: (bool(s.quantized), s.entry.name.lower()))
        with select.prevent(Select.Changed):
            select.set_options([(cell(s.label), str(s.entry.path)) for s in ordered])
            if isinstance(current, str) and current in self.sources:
                select.value = current
        self._show_note()

    def chosen(self) -> Source | None:
        value = self.query_one("#quant-model", Select).value
        return self.sources.get(value) if isinstance(value, str) else None

    @on(Select.Changed, "#quant-model")
    @on(Checkbox.Changed, "#allow-requantize")
    def _show_note(self) -> None:
        note = self.query_one("#quant-note", Static)
        src = self.chosen()
        warn = False
        if src is None:
            text = f"{len(self.sources)} models in the library" if self.sources else "no models in the library"
        elif src.error:
            text, warn = src.error, True
        elif src.quantized and self.query_one("#allow-requantize", Checkbox).value:
            text = f"{src.file_type}: already quantized; with {ALLOW} on it is quantized again (losing quality)"
        elif src.quantized:
            warn = True
            text = (
                f"{src.file_type}: already quantized. Quantizing it again loses quality; quantize from an F32, "
                f"F16 or BF16 model, or switch on {ALLOW}."
            )
        elif src.file_type:
            text = f"{src.file_type}: unquantized, a good source"
        else:
            text = "reading its header…"
        note.set_class(warn, "warning-line")
        note.update(plain(text))

    def refuse(self, text: str) -> None:
        """Why nothing was started: the last run's stage line goes, so the reason is not read as its."""
        self._stage("")
        self.state(text, True)

    def state(self, text: str, error: bool = False) -> None:
        line = self.query_one("#work-state", Static)
        line.set_class(error, "error-line")
        line.update(plain(text))  # paths and errors from outside

    # -- running ------------------------------------------------------------------------

    def on_button_pressed(self, event: Button.Pressed) -> None:
        actions = {
            "build": self.action_build,
            "quantize": self.action_quantize,
            "stop": self.action_stop,
            "load-result": self.action_load_result,
        }
        actions[event.button.id or ""]()

    def _begin(self, what: str, where: str = "app") -> bool:
        if self.running:
            self.notify(f"{self.running} is still running (Esc stops it)", severity="warning")
            return False
        self.running = what
        self.where = where
        self.result = None
        self.stop.clear()
        self.started = time.monotonic()
        self.meter = Meter()
        self.query_one("#stop", Button).disabled = False
        self.query_one("#load-result", Button).disabled = True
        self.query_one("#work-progress", ProgressBar).update(progress=0)
        self.state("")
        self._stage(what)
        return True

    def _progress(self, done: int, total: int, what: str = "", nbytes: int = 0, total_bytes: int = 0) -> None:
        """Called from the worker: stops it when asked, shows how far it is."""
        if self.stop.is_set():
            raise Stopped(f"{self.running}: stopped; nothing was left under a final name")
        self.post_message(WorkProgress(done, total, what, nbytes, total_bytes))

    def on_work_progress(self, event: WorkProgress) -> None:
        self._show_progress(event.done, event.total, event.what, event.nbytes, event.total_bytes)

    def _show_progress(self, done: int, total: int, what: str, nbytes: int, total_bytes: int) -> None:
        pct = int(100 * self.meter.fraction(done, total, nbytes, total_bytes))
        self.query_one("#work-progress", ProgressBar).update(progress=pct)
        self.query_one("#work-state", Static).update(
            plain(self.meter.line(done, total, what[:80], nbytes, total_bytes))
        )

    def _stage(self, text: str) -> None:
        self.query_one("#work-stage", Static).update(plain(text))

    def _failed(self, exc: BaseException) -> str:
        """The line for a failed run, in the app's words (a build's recipe sets what flags would)."""
        if isinstance(exc, ENVIRONMENT):
            return error_line(exc, "write the model", self.where)
        return f"{type(exc).__name__}: {exc}"

    def on_stage_reached(self, event: StageReached) -> None:
        self._stage(event.text)

    def on_work_ended(self, event: WorkEnded) -> None:
        result, error = event.result, event.error
        what = self.running
        self.running = None
        self.query_one("#stop", Button).disabled = True
        took = time.monotonic() - self.started
        if error:
            self.state(error, True)
            return
        self.result = result
        self.query_one("#work-progress", ProgressBar).update(progress=100)
        self.query_one("#load-result", Button).disabled = result is None
        self.state(f"{what}: done in {took:.0f} s: {result}")
        self.notify(f"{what}: done")
        self.refresh_models()

    def action_build(self) -> None:
        raw = self.query_one("#recipe", Input).value.strip()
        if not raw:
            self.refuse("give the path of a recipe (.toml)")
            return
        force = self.query_one("#overwrite", Checkbox).value
        if self._begin(f"build {Path(raw).name}", "build"):
            self._build(Path(raw).expanduser(), force)

    @work(thread=True, exclusive=True, group="workshop", exit_on_error=False)
    def _build(self, recipe: Path, force: bool = False) -> None:
        from converters.build import load_build, run_build

        ws = self.shared.ws
        try:
            plan = load_build(recipe)
            result = run_build(
                recipe,
                ws.paths.models_dir,
                progress=self._progress,
                on_stage=lambda text: self.post_message(StageReached(text)),
                force=force,
            )
            for path in result.outputs:
                if plan.format:
                    ws.save_load_settings(path, {"format": plan.format})
        except Exception as exc:  # on screen, never a crash
            self.post_message(WorkEnded(None, self._failed(exc)))
            return
        self.post_message(WorkEnded(result.chat_model, None))

    def action_quantize(self) -> None:
        src = self.chosen()
        qtype = str(self.query_one("#quant-type", Select).value)
        if src is None:
            self.refuse("choose a model to quantize")
            return
        allow = self.query_one("#allow-requantize", Checkbox).value
        if src.quantized and not allow:
            self.refuse(
                f"{src.entry.name} is already quantized ({src.file_type}): quantizing it again loses quality. "
                f"Choose an F32, F16 or BF16 model, or switch on {ALLOW}."
            )
            return
        from converters.quantize import output_stem

        out = self.shared.ws.paths.models_dir / f"{output_stem(src.entry.path)}.{qtype.upper()}.gguf"
        if out.exists() and not self.query_one("#overwrite", Checkbox).value:
            self.refuse(f"{out}: already exists; switch on {OVERWRITE} to replace it")
            return
        raw = self.query_one("#imatrix", Input).value.strip()
        imatrix = Path(raw).expanduser() if raw else None
        if self._begin(f"quantize to {qtype}"):
            self._quantize(src.entry.path, out, qtype, allow, imatrix)

    @work(thread=True, exclusive=True, group="workshop", exit_on_error=False)
    def _quantize(self, src: Path, out: Path, qtype: str, allow: bool = False, imatrix: Path | None = None) -> None:
        from converters.quantize import quantize

        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            quantize(src, out, qtype, progress=self._progress, allow_requantize=allow, imatrix=imatrix)
        except Exception as exc:  # on screen, never a crash
            self.post_message(WorkEnded(None, self._failed(exc)))
            return
        self.post_message(WorkEnded(out, None))

    def action_stop(self) -> None:
        if self.running:
            self.stop.set()
            self.state(f"{self.running}: stopping…")

    def action_load_result(self) -> None:
        if self.result is not None:
            self.cattery.load_model(self.result, {}, None)
            self.cattery.switch_mode("chat")
