"""SillyTavern's macros, as role-play cards use them.

Case-insensitive; unknown macros stay as written, so text meant for another app is
not damaged. `{{pick}}` is stable for a chat (seeded by the chat's seed and the
macro's position); `{{random}}` and `{{roll}}` draw anew each time they are expanded.

The text is a stranger's, expanded for every prompt, so expansion is one pass over it:
a macro runs from a `{{` to the first `}}` after it (as SillyTavern's regular expression
`{{(.*?)}}` does), found with `str.find`, and once no `}}` is left nothing more is
looked for (the regular expression retried every `{{` to the end: quadratic). What
macros add is capped (`MAX_GROWTH`): a description of 100,000 `{{char}}` with a long
name would otherwise be gigabytes. Dice, choice lists and numbers are bounded too.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from datetime import datetime

_LEGACY = re.compile(r"<(BOT|USER|CHAR)>", re.IGNORECASE)
_ROLL = re.compile(r"([0-9]{0,6})d([0-9]{1,7})([+-][0-9]{1,9})?", re.IGNORECASE)
MAX_GROWTH = 1024 * 1024  # characters macros may add to one text; past it, the rest stays as written
MAX_CHOICES = 10_000  # in one {{random}} or {{pick}}; a longer list stays as written
MAX_DICE, MAX_SIDES = 100, 10**6


@dataclass
class MacroContext:
    char: str
    user: str
    original: str = ""  # the global system prompt, for {{original}} in a card's own (once per text)
    chat_seed: int = 0
    now: datetime | None = None
    rng: random.Random = field(default_factory=random.Random)


def _split_choices(arg: str) -> list[str] | None:
    # SillyTavern takes "a,b" and, when a choice needs a comma, "a::b".
    sep = "::" if "::" in arg else ","
    if arg.count(sep) >= MAX_CHOICES:
        return None
    return arg.split(sep)


def _roll(spec: str, rng: random.Random) -> str | None:
    spec = spec.strip()
    if spec.isascii() and spec.isdigit() and len(spec) <= 7:
        spec = f"1d{spec}"
    m = _ROLL.fullmatch(spec)
    if not m:
        return None
    count, sides = int(m.group(1) or 1), int(m.group(2))
    if not 1 <= count <= MAX_DICE or not 1 <= sides <= MAX_SIDES:
        return None
    return str(sum(rng.randint(1, sides) for _ in range(count)) + int(m.group(3) or 0))


def expand(text: str, ctx: MacroContext) -> str:
    if not text:
        return text
    now = ctx.now or datetime.now()
    counter = 0
    original_used = False

    def replace(body: str, start: int) -> str | None:
        """What the macro `{{body}}` at `start` becomes; None leaves it as written."""
        nonlocal counter, original_used
        if body.lstrip().startswith("//"):
            return ""
        name, _, arg = body.partition(":")
        key = name.strip().lower()
        if key == "char":
            return ctx.char
        if key == "user":
            return ctx.user
        if key == "original":  # once per text, as SillyTavern does: a second one is empty
            value = "" if original_used else ctx.original
            original_used = True
            return value
        if key == "newline":
            return "\n"
        if key == "time":
            return now.strftime("%H:%M")
        if key == "date":
            return now.strftime("%B %d, %Y").replace(" 0", " ")
        if key == "random" and arg:
            choices = _split_choices(arg)
            return None if choices is None else ctx.rng.choice(choices).strip()
        if key == "pick" and arg:
            choices = _split_choices(arg)
            if choices is None:
                return None
            counter += 1
            digest = hashlib.sha256(f"{ctx.chat_seed}:{start}:{counter}:{arg}".encode()).digest()
            return choices[int.from_bytes(digest[:8], "big") % len(choices)].strip()
        if key == "roll" and arg:
            return _roll(arg, ctx.rng)
        return None

    out: list[str] = []
    growth = 0  # characters the macros added so far, over the text they replaced
    pos = 0
    while True:
        start = text.find("{{", pos)
        end = text.find("}}", start + 2) if start >= 0 else -1
        if end < 0:  # no macro left: no `{{`, or no `}}` after it
            break
        out.append(text[pos:start])
        whole = text[start : end + 2]
        value = replace(text[start + 2 : end], start) if growth < MAX_GROWTH else None
        if value is None:
            value = whole
        growth += len(value) - len(whole)
        out.append(value)
        pos = end + 2
    out.append(text[pos:])
    expanded = "".join(out)

    def legacy(m: re.Match[str]) -> str:
        nonlocal growth
        if growth >= MAX_GROWTH:
            return m.group(0)
        name = ctx.user if m.group(1).upper() == "USER" else ctx.char
        growth += len(name) - len(m.group(0))
        return name

    return _LEGACY.sub(legacy, expanded)
