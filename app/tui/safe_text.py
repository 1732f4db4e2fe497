"""No control character from outside reaches the terminal through the app.

Card names, chat text, model names and replies are drawn by Rich and Textual, which
strip only bell, backspace, vertical tab, form feed and carriage return; an escape
character goes through to the terminal as it is, where it can move the cursor,
retitle the window or hide text. Both libraries strip through one translation table
each; adding every other control character (and the bidi overrides) to those tables
covers every widget at once, including ones written later, rather than a strip call
at each of the dozens of places outside text is shown. `app.terminal` defines the set.
"""

from __future__ import annotations

from app.terminal import CONTROL_CODEPOINTS


def strip_controls_everywhere() -> None:
    """Make Rich's and Textual's own control-code stripping remove every control character.

    Idempotent. Raises if either library no longer has its table, so that an upgrade
    that moves it is noticed (tests/hostile/test_hostile_tui.py) rather than silently unsafe.
    """
    import rich.control
    import textual.content

    extra = dict.fromkeys(CONTROL_CODEPOINTS)
    for table in (rich.control._CONTROL_STRIP_TRANSLATE, textual.content._CONTROL_STRIP_TRANSLATE):
        table.update(extra)
