"""Text from outside is shown as it is: never read as markup.

Textual's widgets read a string as markup (`[b]`, `[$accent]`, `[@click=app.quit]`),
and Rich's tables and option lists do too. A card named `[/]` stops the app with a
MarkupError the moment it is drawn; `[@click=app.quit]Mochi` makes a name that quits
when clicked; `[keys]` in an error line just vanishes. Every name, title, path, error
line, key or value that did not come from Cattery's own source goes through one of
these before it reaches a widget; the two shapes are what the widgets take.
"""

from __future__ import annotations

from rich.text import Text
from textual.content import Content


def plain(text: object) -> Content:
    """For Static, Label and `update()`: the text itself, styled by the widget's CSS only."""
    return Content(str(text))


def cell(text: object) -> Text:
    """For DataTable cells, Select and OptionList prompts (they take Rich renderables)."""
    return Text(str(text), end="")
