"""The status bar: which model runs where, the prompt format, how full the context is, the last
reply's speed and what the next turn will cost."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.content import Content
from textual.widgets import Static

if TYPE_CHECKING:
    from app.engine.stats import LoadReport
    from app.prompt.builder import FormatChoice
    from app.session.chat import MessageFit, Preview

METER_CELLS = 12
COMPACT_BELOW = 90  # columns: under this the status bar keeps the numbers and drops the words


@dataclass(frozen=True)
class ModelStatus:
    """Where the app's model stands; the screens watch it."""

    state: str = "none"  # none, loading, ready, failed
    path: Path | None = None
    progress: float = 0.0
    error: str | None = None
    report: LoadReport | None = None
    choice: FormatChoice | None = None
    engine: str | None = None  # the named engine being connected to (the Models screen's), while loading

    @property
    def name(self) -> str:
        if self.path is None and getattr(self.report, "remote", False):
            return str(self.report.name)  # type: ignore[union-attr]
        if self.path is None and self.engine:
            return f"engine {self.engine}"
        return self.path.name.removesuffix(".gguf") if self.path is not None else "no model"


def placement(report: LoadReport) -> str:
    if getattr(report, "remote", False):
        return f"remote: {report.url}"  # type: ignore[attr-defined]
    if report.gpu_layers <= 0:
        return "CPU"
    return f"GPU {min(report.gpu_layers, report.n_layers + 1)}/{report.n_layers + 1}"


def meter(preview: Preview, cells: int = METER_CELLS) -> Content:
    """A bar: pinned block, history, free, in proportion to the context."""
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


def status_content(
    preview: Preview | None,
    tokens_per_second: float | None,
    note: str = "",
    *,
    draft: MessageFit | None = None,
    writing: bool = False,
    keys: str = "",
    compact: bool = False,
    server_count: int | None = None,
) -> Content:
    """The context meter (pinned / history / free), the last reply's speed, the next turn's cost.

    `writing`: `preview` is the context of the turn being written, and the numbers are its own
    (the last reply's speed would be a stale number beside them). `draft`: the text in the box
    counted; one that can never fit says so here, before it is sent. `keys`: where the context
    is changed in the app. `compact`: a narrow terminal, the numbers without the words.
    `server_count`: the prompt tokens a remote engine said it evaluated for the last reply.
    """
    parts: list[Content] = []
    too_long = not writing and draft is not None and not draft.fits
    if preview is not None:
        # A warning takes the room of the meter's details: it is what matters then.
        short = compact or too_long or bool(preview.problem)
        detail = "" if short else f"  pinned {preview.pinned} · history {preview.history} · free {preview.free}"
        bar = meter(preview, METER_CELLS // 2 if compact else METER_CELLS)
        parts.append(Content.assemble("" if compact else "ctx ", bar, f" {preview.used}/{preview.n_ctx}{detail}"))
    if writing:
        if preview is not None:
            parts.append(
                Content(
                    f"this turn: +{preview.to_evaluate}"
                    if compact
                    else f"this turn: {preview.to_evaluate} to evaluate, {preview.reused} cached"
                    + (f" ({preview.restored} from snapshot)" if preview.restored else "")
                )
            )
    else:
        if tokens_per_second and not too_long:
            said = (
                ""
                if server_count is None
                else f" (+{server_count})"
                if compact
                else f", server evaluated {server_count}"
            )
            parts.append(Content(f"{tokens_per_second:.1f} tok/s{said}"))
        if preview is not None and preview.problem:
            parts.append(Content.from_markup("[$error]$problem[/]", problem=preview.problem))
        elif too_long:
            assert draft is not None
            where = f" (context: {keys})" if keys else ""
            words = "too long: $tokens > $room" if compact else "your message: $tokens tokens, room for $room$where"
            parts.append(
                Content.from_markup(
                    f"[$error]{words}[/]", tokens=f"{draft.tokens:,}", room=f"{max(0, draft.room):,}", where=where
                )
            )
        elif preview is not None:
            mine = f"your message ({draft.tokens})" if draft is not None else "your message"
            parts.append(
                Content(
                    f"next: +{preview.to_evaluate}"
                    if compact
                    else f"next turn: {mine} + {preview.to_evaluate}"
                    + (f" ({preview.restored} restored from snapshot)" if preview.restored else "")
                )
            )
    if note:
        parts.append(Content(note))
    return Content(" │ ").join(parts) if parts else Content("")


class StatusBar(Static):
    """One line under the messages; shorter words when the terminal is narrow."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shown: tuple[tuple[Any, ...], dict[str, Any]] = ((None, None), {})

    def show(self, preview: Preview | None, tokens_per_second: float | None, note: str = "", **kw: Any) -> None:
        self._shown = ((preview, tokens_per_second, note), kw)
        self._draw()

    def _draw(self) -> None:
        args, kw = self._shown
        self.update(status_content(*args, **kw, compact=0 < self.size.width < COMPACT_BELOW))

    def on_resize(self) -> None:
        self._draw()


class ModelLine(Static):
    def show(self, model: ModelStatus) -> None:
        self.set_class(model.state == "failed", "-error")
        self.update(model_content(model))
