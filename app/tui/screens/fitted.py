"""Screens that stay usable in a small terminal (40×12 over SSH on a phone, a split pane).

Textual sets breakpoint classes on the screen that is resized, but not on one shown
after the terminal changed size behind it (the app's modes keep their screens), so a
screen here sets them again whenever it is shown. The stylesheet does the rest: under
`-narrow` forms put each label above its field and side-by-side panes stack; under
`-short` titles lose their margins and lists get a fixed height inside a scrolling body.
"""

from __future__ import annotations

from typing import ClassVar

from textual.screen import Screen

from app.tui.keys import ScreenKeysFirst

WIDTHS: list[tuple[int, str]] = [(0, "-narrow"), (60, "-medium"), (100, "-wide")]
HEIGHTS: list[tuple[int, str]] = [(0, "-short"), (20, "-tall")]


def breakpoint_classes(width: int, height: int) -> dict[str, bool]:
    """Which of the classes hold at this size: the last breakpoint at or under each dimension."""

    def pick(value: int, points: list[tuple[int, str]]) -> str:
        chosen = points[0][1]
        for at, name in points:
            if value >= at:
                chosen = name
        return chosen

    on = {pick(width, WIDTHS), pick(height, HEIGHTS)}
    return {name: name in on for _, name in [*WIDTHS, *HEIGHTS]}


class Fits:
    """For a screen or a dialog: the breakpoint classes set whenever it is shown, not only on a resize."""

    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]] | None] = WIDTHS
    VERTICAL_BREAKPOINTS: ClassVar[list[tuple[int, str]] | None] = HEIGHTS

    def fit_to_terminal(self) -> None:
        screen: Screen[object] = self  # type: ignore[assignment]
        width, height = screen.app.size
        screen.update_classes(breakpoint_classes(width, height), animate=False)

    def on_mount(self) -> None:
        self.fit_to_terminal()

    def on_screen_resume(self) -> None:
        self.fit_to_terminal()


class FittedScreen(ScreenKeysFirst, Fits, Screen[None]):
    """A screen of the app (not the chat) that stays usable down to 40×12."""
