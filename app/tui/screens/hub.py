"""The hub: search GGUF repos, see a repo's models with sizes and whether each fits this machine,
download one with a progress bar (cancel keeps what arrived, for a resume), then load it.

Every request runs in a thread worker; the screen only shows what they post.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Button, DataTable, Footer, Input, ProgressBar, Static

from app.errors import CatteryError
from app.tui.keys import bindings
from app.tui.plain import cell, plain
from app.tui.screens.fitted import FittedScreen
from app.tui.state import SharedState
from app.units import fmt_size

if TYPE_CHECKING:
    from app.hub.download import DownloadStatus, Plan
    from app.hub.names import GGUFModel
    from app.hub.remote import RepoHit


def progress_text(p: DownloadStatus) -> str:
    eta = p.eta
    left = f", {int(eta // 60)}:{int(eta % 60):02d} left" if eta is not None else ""
    return f"{fmt_size(p.done)} of {fmt_size(p.total)}, {fmt_size(p.speed)}/s{left}"


class HubSaid(Message):
    """A line for the state line below the tables (what a worker ran into)."""

    def __init__(self, text: str, error: bool = False) -> None:
        super().__init__()
        self.text = text
        self.error = error


class HitsFound(Message):
    def __init__(self, query: str, hits: list[RepoHit]) -> None:
        super().__init__()
        self.query = query
        self.hits = hits


class RepoUnreadable(Message):
    def __init__(self, repo: str, error: str) -> None:
        super().__init__()
        self.repo = repo
        self.error = error


class ModelsListed(Message):
    """A repo's GGUF models, before their headers are read."""

    def __init__(self, repo: str, commit: str, models: list[GGUFModel], unique: set[str]) -> None:
        super().__init__()
        self.repo = repo
        self.commit = commit
        self.models = models
        self.unique = unique


class VerdictRead(Message):
    """One model's header read: its quant type and whether it fits this machine."""

    def __init__(self, repo: str, label: str, quant: str, text: str) -> None:
        super().__init__()
        self.repo = repo
        self.label = label
        self.quant = quant
        self.text = text


class DownloadProgress(Message):
    def __init__(self, label: str, progress: DownloadStatus) -> None:
        super().__init__()
        self.label = label
        self.progress = progress


class DownloadEnded(Message):
    """The download ended: the file's path, or the error line."""

    def __init__(self, label: str, path: Path | None, error: str | None) -> None:
        super().__init__()
        self.label = label
        self.path = path
        self.error = error


class HubScreen(SharedState, FittedScreen):
    KEY_SECTION = "hub"
    BINDINGS: ClassVar[list[Binding]] = bindings("hub")

    def __init__(self) -> None:
        super().__init__()
        self.hits: dict[str, RepoHit] = {}
        self.repo: str | None = None
        self.commit: str | None = None
        self.models: dict[str, GGUFModel] = {}
        self.cancel = threading.Event()
        self.downloading: str | None = None
        self.downloaded: Path | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="hub-body"):
            yield Static("Models on the Hugging Face hub", classes="pane-title")
            yield Input(
                placeholder="Search GGUF repos by name (e.g. mythomax, llama-3 8b instruct), Enter", id="hub-search"
            )
            yield DataTable(id="hub-repos", cursor_type="row", zebra_stripes=True)
            yield Static("", id="hub-files-title", classes="pane-title")
            yield DataTable(id="hub-files", cursor_type="row", zebra_stripes=True)
            with Horizontal(classes="buttons", id="hub-actions"):
                yield Button("Download", variant="primary", id="hub-download", disabled=True, compact=True)
                yield Button("Cancel", id="hub-cancel", disabled=True, compact=True)
                yield Button("Load", id="hub-load", disabled=True, compact=True)
                yield ProgressBar(id="hub-progress", total=100, show_eta=False)
            yield Static("", id="hub-state")
        yield Footer(compact=True, show_command_palette=False)  # Ctrl+P: F1 says so

    def on_mount(self) -> None:
        repos = self.query_one("#hub-repos", DataTable)
        for key, label in (("repo", "repo"), ("downloads", "downloads"), ("sizes", "sizes"), ("updated", "updated")):
            repos.add_column(label, key=key)
        files = self.query_one("#hub-files", DataTable)
        for key, label in (("name", "model"), ("size", "size"), ("quant", "quant"), ("fit", "on this machine")):
            files.add_column(label, key=key)
        self.query_one("#hub-search", Input).focus()

    def state(self, text: str, error: bool = False) -> None:
        line = self.query_one("#hub-state", Static)
        line.set_class(error, "error-line")
        line.update(plain(text))  # repo names and errors come from the hub

    # -- search -----------------------------------------------------------------------

    @on(Input.Submitted, "#hub-search")
    def search_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.state(f"searching for {event.value.strip()!r}…")
            self.search(event.value.strip())

    def action_search(self) -> None:
        self.query_one("#hub-search", Input).focus()

    @work(thread=True, exclusive=True, group="hub-search", exit_on_error=False)
    def search(self, query: str) -> None:
        from app.hub.remote import search

        try:
            hits = search(query, limit=25)
        except CatteryError as exc:
            self.post_message(HubSaid(str(exc), True))
            return
        self.post_message(HitsFound(query, hits))

    def on_hub_said(self, event: HubSaid) -> None:
        self.state(event.text, event.error)

    def on_hits_found(self, event: HitsFound) -> None:
        query, hits = event.query, event.hits
        table = self.query_one("#hub-repos", DataTable)
        table.clear()
        self.hits = {h.id: h for h in hits}
        for h in hits:
            sizes = (
                fmt_size(h.smallest) if h.smallest == h.largest else f"{fmt_size(h.smallest)} – {fmt_size(h.largest)}"
            )
            when = h.last_modified.strftime("%Y-%m-%d") if h.last_modified else "?"
            table.add_row(cell(h.id + (" (gated)" if h.gated else "")), f"{h.downloads:,}", sizes, when, key=h.id)
        self.state(f"{len(hits)} repos for {query!r}" if hits else f"no GGUF repos match {query!r} (names only)")
        if hits:
            table.focus()

    @on(DataTable.RowSelected, "#hub-repos")
    def repo_selected(self, event: DataTable.RowSelected) -> None:
        repo = str(event.row_key.value)
        self.repo = repo
        self.query_one("#hub-files-title", Static).update(plain(f"{repo}: reading the models' headers…"))
        self.query_one("#hub-files", DataTable).clear()
        self.files(repo)

    # -- a repo's models --------------------------------------------------------------

    @work(thread=True, exclusive=True, group="hub-files", exit_on_error=False)
    def files(self, repo: str) -> None:
        from app.engine.preflight import choose_ctx
        from app.hub.fit import fit, machine_memory
        from app.hub.names import unique_quants
        from app.hub.remote import remote_headers, repo_models

        try:
            commit, models, _ = repo_models(repo)
        except CatteryError as exc:
            self.post_message(RepoUnreadable(repo, str(exc)))
            return
        unique = unique_quants(models)
        self.post_message(ModelsListed(repo, commit, models, unique))
        ws = self.shared.ws
        ram, vram = machine_memory()
        options = ws.load_options({})
        # The same bounded reads as `cattery models files`: the first models of the repo, a few at a time.
        for model, info in remote_headers(repo, commit, models):
            try:
                if isinstance(info, CatteryError):
                    raise info
                n_ctx = choose_ctx(info, options, ws.default_ctx)
                weights = model.size if len(model.parts) > 1 else None
                f = fit(info, n_ctx, options, ram_free=ram, vram_free=vram, weights=weights)
                text = f"{f.text(info.block_count or 0)} at ctx {n_ctx}"
                quant = info.file_type or model.quant or "?"
            except CatteryError as exc:
                text, quant = f"header unreadable: {exc}", model.quant or "?"
            self.post_message(VerdictRead(repo, model.label(repo, model.quant in unique), quant, text))

    def on_repo_unreadable(self, event: RepoUnreadable) -> None:
        self.state(event.error, True)
        self.query_one("#hub-files-title", Static).update(plain(f"{event.repo}: not readable"))

    def on_models_listed(self, event: ModelsListed) -> None:
        repo, commit, models, unique = event.repo, event.commit, event.models, event.unique
        if repo != self.repo:
            return
        self.commit = commit
        table = self.query_one("#hub-files", DataTable)
        table.clear()
        self.models = {}
        for m in models:
            label = m.label(repo, m.quant in unique)
            self.models[label] = m
            parts = f" ({len(m.parts)} parts)" if len(m.parts) > 1 else ""
            table.add_row(cell(label), fmt_size(m.size) + parts, cell(m.quant or "?"), "…", key=label)
        count = f"{len(models)} model" + ("" if len(models) == 1 else "s")
        title = f"{repo}: {count}" if models else f"{repo}: no GGUF files"
        self.query_one("#hub-files-title", Static).update(plain(title))
        self.query_one("#hub-download", Button).disabled = not models
        if models:
            table.focus()

    def on_verdict_read(self, event: VerdictRead) -> None:
        if event.repo != self.repo or event.label not in self.models:
            return
        table = self.query_one("#hub-files", DataTable)
        table.update_cell(event.label, "quant", cell(event.quant), update_width=True)
        table.update_cell(event.label, "fit", cell(event.text), update_width=True)

    def _chosen(self) -> str | None:
        table = self.query_one("#hub-files", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return str(key) if key is not None else None

    @on(DataTable.RowSelected, "#hub-files")
    def model_selected(self) -> None:
        self.action_download()

    # -- download and load ------------------------------------------------------------

    def on_button_pressed(self, event: Button.Pressed) -> None:
        {"hub-download": self.action_download, "hub-cancel": self.action_cancel, "hub-load": self.action_load}[
            event.button.id or ""
        ]()

    def action_download(self) -> None:
        label = self._chosen()
        if label is None or self.repo is None or self.downloading:
            return
        from app.hub.names import HubRef

        model = self.models[label]
        ref = HubRef(self.repo, model.first.path)
        self.cancel.clear()
        self.downloading = label
        self.downloaded = None
        self.query_one("#hub-download", Button).disabled = True
        self.query_one("#hub-cancel", Button).disabled = False
        self.query_one("#hub-load", Button).disabled = True
        self.query_one("#hub-progress", ProgressBar).update(progress=0)
        self.state(f"{label}: starting…")
        self.download(ref, label)

    @work(thread=True, exclusive=True, group="hub-download", exit_on_error=False)
    def download(self, ref: Any, label: str) -> None:
        from app.hub.download import download, plan_download

        last = [0.0]

        def progress(p: DownloadStatus) -> None:
            now = time.monotonic()
            if now - last[0] > 0.1 or p.done >= p.total:
                last[0] = now
                self.post_message(DownloadProgress(label, p))

        try:
            plan: Plan = plan_download(ref)
            paths = download(plan, progress=progress, cancel=self.cancel)
        except CatteryError as exc:
            self.post_message(DownloadEnded(label, None, str(exc)))
            return
        except Exception as exc:  # on screen, never a crash
            self.post_message(DownloadEnded(label, None, f"{type(exc).__name__}: {exc}"))
            return
        self.post_message(DownloadEnded(label, paths[0], None))

    def on_download_progress(self, event: DownloadProgress) -> None:
        p = event.progress
        bar = self.query_one("#hub-progress", ProgressBar)
        bar.update(progress=int(100 * p.done / p.total) if p.total else 100)
        self.state(f"{event.label}: {progress_text(p)}")

    def on_download_ended(self, event: DownloadEnded) -> None:
        label, path, error = event.label, event.path, event.error
        self.downloading = None
        self.query_one("#hub-download", Button).disabled = not self.models
        self.query_one("#hub-cancel", Button).disabled = True
        if error:
            self.state(error, True)
            return
        self.downloaded = path
        self.query_one("#hub-progress", ProgressBar).update(progress=100)
        self.query_one("#hub-load", Button).disabled = False
        self.state(f"{label}: downloaded and checked (SHA-256). Ctrl+L loads it.")
        self.notify(f"{label} downloaded")

    def action_cancel(self) -> None:
        if self.downloading:
            self.cancel.set()
            self.state(f"{self.downloading}: cancelling (what arrived is kept for a resume)…")

    def action_load(self) -> None:
        if self.downloaded is None:
            return
        self.cattery.load_model(self.downloaded, {}, None)
        self.cattery.switch_mode("chat")
