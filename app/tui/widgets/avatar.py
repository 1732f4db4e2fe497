"""A speaker's avatar: the card's image where the terminal can draw it, a coloured initial elsewhere.

Terminals with Kitty's graphics protocol or Sixel get the real picture; others get
the picture in coloured half-cells when asked for (`[ui] images = "on"`), or a
coloured initial, which reads well at the size of a chat line.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
from functools import cache
from typing import Any

from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Static


@cache
def graphics_protocol() -> bool:
    """True when textual-image found Kitty's protocol or Sixel on this terminal."""
    try:
        from textual_image.renderable import HalfcellImage, Image, UnicodeImage
    except Exception:  # no terminal to ask, or the package is missing
        return False
    return Image not in (HalfcellImage, UnicodeImage)


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


def _pil_image(data: bytes) -> Any:
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img


class Avatar(Widget):
    def __init__(self, name: str, image: bytes | None = None, *, mode: str = "auto", big: bool = False) -> None:
        super().__init__(classes="big" if big else "")
        self.speaker = name
        self.image_data = image
        self.mode = mode
        self.big = big

    def _wants_image(self) -> bool:
        if not self.image_data or self.mode == "off":
            return False
        # Half-cells are too coarse at chat size: there the picture needs a graphics protocol.
        return self.mode == "on" or graphics_protocol() or (self.big and self.mode == "auto")

    def compose(self) -> ComposeResult:
        if self._wants_image():
            try:
                picture = _pil_image(self.image_data or b"")
            except Exception:  # a damaged avatar is shown as an initial, never an error
                picture = None
            if picture is not None:
                from textual_image.widget import Image as ImageWidget

                widget = ImageWidget(picture)
                widget.styles.width = "100%"
                widget.styles.height = "100%"
                yield widget
                return
        initial = Static(initials(self.speaker), classes="initial")
        initial.styles.background = name_colour(self.speaker)
        yield initial
