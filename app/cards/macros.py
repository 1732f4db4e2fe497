"""SillyTavern's macros, as role-play cards use them.

Case-insensitive; unknown macros stay as written, so text meant for another app is
not damaged. `{{pick}}` is stable for a chat (seeded by the chat's seed and the
macro's position); `{{random}}` and `{{roll}}` draw anew each time they are expanded.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from datetime import datetime

_MACRO = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_LEGACY = re.compile(r"<(BOT|USER|CHAR)>", re.IGNORECASE)
_ROLL = re.compile(r"^(\d*)d(\d+)([+-]\d+)?$", re.IGNORECASE)


@dataclass
class MacroContext:
    char: str
    user: str
    original: str = ""  # the global system prompt, for {{original}} in a card's own
    chat_seed: int = 0
    now: datetime | None = None
    rng: random.Random = field(default_factory=random.Random)


def _split_choices(arg: str) -> list[str]:
    # SillyTavern takes "a,b" and, when a choice needs a comma, "a::b".
    return arg.split("::") if "::" in arg else arg.split(",")


def _roll(spec: str, rng: random.Random) -> str | None:
    spec = spec.strip()
    if spec.isdigit():
        spec = f"1d{spec}"
    m = _ROLL.match(spec)
    if not m:
        return None
    count, sides = int(m.group(1) or 1), int(m.group(2))
    if not 1 <= count <= 100 or not 1 <= sides <= 10**6:
        return None
    return str(sum(rng.randint(1, sides) for _ in range(count)) + int(m.group(3) or 0))


def expand(text: str, ctx: MacroContext) -> str:
    if not text:
        return text
    now = ctx.now or datetime.now()
    counter = 0

    def replace(m: re.Match[str]) -> str:
        nonlocal counter
        body = m.group(1)
        name, _, arg = body.partition(":")
        key = name.strip().lower()
        if body.lstrip().startswith("//"):
            return ""
        if key == "char":
            return ctx.char
        if key == "user":
            return ctx.user
        if key == "original":
            return ctx.original
        if key == "newline":
            return "\n"
        if key == "time":
            return now.strftime("%H:%M")
        if key == "date":
            return now.strftime("%B %d, %Y").replace(" 0", " ")
        if key == "random" and arg:
            return ctx.rng.choice(_split_choices(arg)).strip()
        if key == "pick" and arg:
            counter += 1
            digest = hashlib.sha256(f"{ctx.chat_seed}:{m.start()}:{counter}:{arg}".encode()).digest()
            choices = _split_choices(arg)
            return choices[int.from_bytes(digest[:8], "big") % len(choices)].strip()
        if key == "roll" and arg:
            rolled = _roll(arg, ctx.rng)
            if rolled is not None:
                return rolled
        return m.group(0)

    out = _MACRO.sub(replace, text)
    return _LEGACY.sub(lambda m: ctx.user if m.group(1).upper() == "USER" else ctx.char, out)
