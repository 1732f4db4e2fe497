"""Example dialogue (`mes_example`): blocks split on <START>, lines parsed into turns."""

from __future__ import annotations

import re

from app.prompt.segments import Message

_START = re.compile(r"^\s*<START>\s*$", re.IGNORECASE | re.MULTILINE)


def parse_examples(text: str, user: str, char: str) -> list[list[Message]]:
    """Blocks of turns. `text` has its macros expanded already, so speakers appear by name."""
    blocks: list[list[Message]] = []
    for raw in _START.split(text or ""):
        turns: list[Message] = []
        for line in raw.strip("\n").splitlines():
            role = None
            for speaker, r in ((user, "user"), (char, "assistant")):
                if line.startswith(f"{speaker}:"):
                    role, line = r, line[len(speaker) + 1 :].lstrip()
                    break
            if role is not None:
                turns.append(Message(role, line))
            elif turns:
                last = turns[-1]
                turns[-1] = Message(last.role, f"{last.content}\n{line}")
        turns = [Message(t.role, t.content.strip()) for t in turns if t.content.strip()]
        if turns:
            blocks.append(turns)
    return blocks
