"""The workshop: run a build recipe, or quantize a model of the library, with a progress bar.

The work runs in a thread worker; its progress reaches the screen through
`call_from_thread`, and Esc asks it to stop (the converters write under temporary
names, so a stopped run leaves no file under a final name).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label, ProgressBar, Select, Static

from app.errors import CatteryError
from app.progress import Meter
from app.tui.guard import ENVIRONMENT, error_line, reported
from app.tui.keys import bindings
from app.tui.plain import cell, plain
from app.tui.screens.dialogs import PathSuggester

if TYPE_CHECKING:
    from app.tui.app import CatteryApp

COMMON_TYPES = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "Q4_K_S", "Q5_K_S", "Q3_K_M", "IQ4_XS", "Q4_0", "F16")


class Stopped(CatteryError):
    exit_code = 130


class WorkshopScreen(Screen[None]):
    KEY_SECTION = "workshop"
    BINDINGS: ClassVar[list[Binding]] = bindings("workshop")

    def __init__(self) -> None:
        super().__init__()
        self.stop = threading.Event()
        self.running: str | None = None
        self.result: Path | None = None
        self.started = 0.0
        self.meter = Meter()

    @property
    def cattery(self) -> CatteryApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        with Vertical(id="workshop-body"):
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
                yield Select(
                    [(t, t) for t in COMMON_TYPES], value="Q4_K_M", id="quant-type", allow_blank=False, compact=True
                )
            with Horizontal(classes="buttons"):
                yield Button("Quantize", variant="primary", id="quantize", compact=True)
                yield Button("Stop", id="stop", disabled=True, compact=True)
                yield Button("Load the result", id="load-result", disabled=True, compact=True)
            yield ProgressBar(id="work-progress", total=100, show_eta=False)
            yield Static("", id="work-stage")
            yield Static("", id="work-state")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_models()

    def on_screen_resume(self) -> None:
        self.refresh_models()

    def refresh_models(self) -> None:
        select = self.query_one("#quant-model", Select)
        with reported(self, "read the models folder") as listed:
            entries = self.cattery.ws.models()
        if not listed.ok:
            return
        current = select.value
        select.set_options([(cell(f"{e.name}  ({e.source})"), str(e.path)) for e in entries])
        if current in {str(e.path) for e in entries}:
            select.value = current

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

    def _begin(self, what: str) -> bool:
        if self.running:
            self.notify(f"{self.running} is still running (Esc stops it)", severity="warning")
            return False
        self.running = what
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
        self.app.call_from_thread(self._show_progress, done, total, what, nbytes, total_bytes)

    def _show_progress(self, done: int, total: int, what: str, nbytes: int, total_bytes: int) -> None:
        pct = int(100 * self.meter.fraction(done, total, nbytes, total_bytes))
        self.query_one("#work-progress", ProgressBar).update(progress=pct)
        self.query_one("#work-state", Static).update(
            plain(self.meter.line(done, total, what[:80], nbytes, total_bytes))
        )

    def _stage(self, text: str) -> None:
        self.query_one("#work-stage", Static).update(plain(text))

    def _ended(self, result: Path | None, error: str | None) -> None:
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
            self.state("give the path of a recipe (.toml)", True)
            return
        if self._begin(f"build {Path(raw).name}"):
            self._build(Path(raw).expanduser())

    @work(thread=True, exclusive=True, group="workshop", exit_on_error=False)
    def _build(self, recipe: Path) -> None:
        from converters.build import load_build, run_build

        ws = self.cattery.ws
        try:
            plan = load_build(recipe)
            result = run_build(
                recipe,
                ws.paths.models_dir,
                progress=self._progress,
                on_stage=lambda text: self.app.call_from_thread(self._stage, text),
            )
            for path in result.outputs:
                if plan.format:
                    ws.save_load_settings(path, {"format": plan.format})
        except ENVIRONMENT as exc:
            self.app.call_from_thread(self._ended, None, error_line(exc, "write the model"))
            return
        except Exception as exc:  # on screen, never a crash
            self.app.call_from_thread(self._ended, None, f"{type(exc).__name__}: {exc}")
            return
        self.app.call_from_thread(self._ended, result.chat_model, None)

    def action_quantize(self) -> None:
        model = self.query_one("#quant-model", Select).value
        qtype = str(self.query_one("#quant-type", Select).value)
        if not isinstance(model, str):
            self.state("choose a model to quantize", True)
            return
        if self._begin(f"quantize to {qtype}"):
            self._quantize(Path(model), qtype)

    @work(thread=True, exclusive=True, group="workshop", exit_on_error=False)
    def _quantize(self, src: Path, qtype: str) -> None:
        from converters.quantize import output_stem, quantize

        out = self.cattery.ws.paths.models_dir / f"{output_stem(src)}.{qtype.upper()}.gguf"
        try:
            if out.exists():
                raise CatteryError(f"{out}: already exists; remove it first (`cattery models rm`)")
            out.parent.mkdir(parents=True, exist_ok=True)
            quantize(src, out, qtype, progress=self._progress)
        except ENVIRONMENT as exc:
            self.app.call_from_thread(self._ended, None, error_line(exc, "write the model"))
            return
        except Exception as exc:
            self.app.call_from_thread(self._ended, None, f"{type(exc).__name__}: {exc}")
            return
        self.app.call_from_thread(self._ended, out, None)

    def action_stop(self) -> None:
        if self.running:
            self.stop.set()
            self.state(f"{self.running}: stopping…")

    def action_load_result(self) -> None:
        if self.result is not None:
            self.cattery.load_model(self.result, {}, None)
            self.cattery.switch_mode("chat")
