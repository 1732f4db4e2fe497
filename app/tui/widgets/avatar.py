"""A speaker's avatar: the card's image where the terminal can draw it, a coloured initial elsewhere.

Terminals with Kitty's graphics protocol or Sixel get the real picture; others get
the picture in coloured half-cells when asked for (`[ui] images = "on"`), or a
coloured initial, which reads well at the size of a chat line.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import os
import sys
from functools import cache
from typing import Any

from textual.app import ComposeResult
from textual.widgets import Static

# Terminals that draw pictures (Kitty's graphics protocol or Sixel), by what they put in
# the environment. Asking the terminal itself costs up to 0.3 s at every start where the
# answer is no (the questions time out), so only these are asked unless `images = "on"`.
GRAPHICS_TERMS = ("kitty", "foot", "mlterm", "contour", "ghostty", "wezterm", "mintty")
GRAPHICS_PROGRAMS = ("wezterm", "iterm.app", "ghostty", "mintty", "contour")
GRAPHICS_VARS = ("KITTY_WINDOW_ID", "WEZTERM_EXECUTABLE", "KONSOLE_VERSION", "GHOSTTY_RESOURCES_DIR")


def may_draw_pictures(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    term = env.get("TERM", "").lower()
    program = env.get("TERM_PROGRAM", "").lower()
    if "TMUX" in env or term.startswith(("screen", "tmux")):
        return False  # pictures do not pass through a multiplexer reliably
    return (
        any(t in term for t in GRAPHICS_TERMS) or program in GRAPHICS_PROGRAMS or any(v in env for v in GRAPHICS_VARS)
    )


@cache
def graphics_protocol(mode: str = "auto") -> bool:
    """True when textual-image found Kitty's protocol or Sixel on this terminal."""
    if mode == "off" or (mode == "auto" and not may_draw_pictures()):
        return False
    try:
        from textual_image.renderable import HalfcellImage, Image, UnicodeImage
    except Exception:  # no terminal to ask, or the package is missing
        return False
    return Image not in (HalfcellImage, UnicodeImage)


class _NotATerminal:
    """Stands in for stdout while textual-image is imported, so that it asks nothing."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def prepare_pictures(mode: str) -> None:
    """Import textual-image before Textual takes the terminal.

    Importing it asks the terminal questions and reads the answers from stdin; done
    while the app runs, that steals the user's key presses. Where pictures are not
    wanted from the terminal, it is imported with stdout looking like no terminal, so
    it asks nothing and half-cells are drawn for the bigger pictures.
    """
    if mode == "off":
        return
    if graphics_protocol(mode):
        import textual_image.widget

        return
    real = sys.__stdout__
    sys.__stdout__ = _NotATerminal(real)  # type: ignore[assignment]
    try:
        import textual_image.widget  # noqa: F401
    finally:
        sys.__stdout__ = real


def name_colour(name: str) -> str:
    """A stable colour per name, light enough for dark and light themes alike."""
    hue = int.from_bytes(hashlib.sha1(name.encode()).digest()[:2], "big") / 65535
    r, g, b = colorsys.hls_to_rgb(hue, 0.42, 0.55)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def initials(name: str) -> str:
    words = [w for w in name.replace("_", " ").split() if w[:1].isalnum()]
    if not words:
        return "?"
    return (words[0][0] + (words[1][0] if len(words) > 1 else "")).upper()


# An avatar larger than this is shown as initials: decoding it would take seconds and a
# few hundred MB on the UI thread (cards may carry pictures up to app.cards' import bound).
MAX_SHOWN_PIXELS = 16_000_000


def _pil_image(data: bytes) -> Any:
    from PIL import Image

    from app.cards.images import FORMATS

    img = Image.open(io.BytesIO(data), formats=("PNG", *FORMATS))  # reads the header, not the pixels
    if img.size[0] * img.size[1] > MAX_SHOWN_PIXELS:
        img.close()
        return None
    img.load()
    return img


class Avatar(Static):
    """The picture when there is one to show, else the initials on the name's colour.

    Initials are drawn by this widget itself: a chat shows dozens of avatars, and
    every widget less per message makes the screen quicker to build and update.
    """

    def __init__(self, name: str, image: bytes | None = None, *, mode: str = "auto", big: bool = False) -> None:
        self.speaker = name
        self.image_data = image
        self.mode = mode
        self.big = big
        self.picture = self._picture()
        super().__init__("" if self.picture is not None else initials(name), classes="big" if big else "")
        if self.picture is None:
            self.add_class("initial")
            self.styles.background = name_colour(name)

    def _picture(self) -> Any:
        if not self.image_data or self.mode == "off":
            return None
        # Half-cells are too coarse at chat size: there the picture needs a graphics protocol.
        if not (self.mode == "on" or self.big or graphics_protocol(self.mode)):
            return None
        try:
            return _pil_image(self.image_data)
        except Exception:  # a damaged avatar is shown as initials, never an error
            return None

    def compose(self) -> ComposeResult:
        if self.picture is not None:
            if graphics_protocol(self.mode):
                from textual_image.widget import Image as ImageWidget
            else:
                from textual_image.widget import HalfcellImage as ImageWidget

            widget = ImageWidget(self.picture)
            widget.styles.width = "100%"
            widget.styles.height = "100%"
            yield widget
