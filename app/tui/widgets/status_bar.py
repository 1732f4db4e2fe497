"""The status bar: which model runs where, the prompt format, how full the context is, the last
reply's speed and what the next turn will cost."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from textual.content import Content
from textual.widgets import Static

if TYPE_CHECKING:
    from app.engine.stats import LoadReport
    from app.prompt.builder import FormatChoice
    from app.session.chat import Preview

METER_CELLS = 12


@dataclass(frozen=True)
class ModelStatus:
    """Where the app's model stands; the screens watch it."""

    state: str = "none"  # none, loading, ready, failed
    path: Path | None = None
    progress: float = 0.0
    error: str | None = None
    report: LoadReport | None = None
    choice: FormatChoice | None = None

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".gguf") if self.path is not None else "no model"


def placement(report: LoadReport) -> str:
    if report.gpu_layers <= 0:
        return "CPU"
    return f"GPU {min(report.gpu_layers, report.n_layers + 1)}/{report.n_layers + 1}"


def meter(preview: Preview) -> Content:
    """A bar: pinned block, history, free, in proportion to the context."""
    cells = METER_CELLS
    pinned = round(cells * preview.pinned / preview.n_ctx) if preview.pinned else 0
    history = round(cells * preview.history / preview.n_ctx) if preview.history else 0
    pinned = max(pinned, 1 if preview.pinned else 0)
    history = min(max(history, 1 if preview.history else 0), cells - pinned)
    free = cells - pinned - history
    return Content.from_markup(
        "[$accent]$p[/][$primary]$h[/][$text-muted]$f[/]", p="█" * pinned, h="▆" * history, f="░" * free
    )


def model_content(model: ModelStatus) -> Content:
    """The model, its prompt format and where its layers run, for the top bar."""
    if model.state == "loading":
        return Content.from_markup("[$warning]loading $name… $pct%[/]", name=model.name, pct=int(model.progress * 100))
    if model.state == "failed":
        return Content.from_markup("[$error]no model: $error[/]", error=model.error or "failed")
    if model.state == "ready" and model.report is not None:
        fmt = model.choice.name if model.choice is not None else "?"
        return Content(f"{model.name} · {fmt} · {placement(model.report)}")
    return Content("no model loaded (F4)")


def status_content(preview: Preview | None, tokens_per_second: float | None, note: str = "") -> Content:
    """The context meter (pinned / history / free), the last reply's speed, the next turn's cost."""
    parts: list[Content] = []
    if preview is not None:
        parts.append(
            Content.assemble(
                "ctx ",
                meter(preview),
                f" {preview.used}/{preview.n_ctx}  pinned {preview.pinned} · history {preview.history}"
                f" · free {preview.free}",
            )
        )
    if tokens_per_second:
        parts.append(Content(f"{tokens_per_second:.1f} tok/s"))
    if preview is not None:
        parts.append(Content(f"next turn: your message + {preview.to_evaluate}"))
    if note:
        parts.append(Content(note))
    return Content(" │ ").join(parts) if parts else Content("")


class StatusBar(Static):
    def show(self, preview: Preview | None, tokens_per_second: float | None, note: str = "") -> None:
        self.update(status_content(preview, tokens_per_second, note))


class ModelLine(Static):
    def show(self, model: ModelStatus) -> None:
        self.set_class(model.state == "failed", "-error")
        self.update(model_content(model))
