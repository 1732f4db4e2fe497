"""Example dialogue (`mes_example`): blocks split on <START>, lines parsed into turns.

Linear in the text: the <START> line allows only spaces and tabs around it (`\\s*`
there also crossed newlines, and a run of empty lines made the search quadratic),
and a turn's lines are gathered in a list and joined once.
"""

from __future__ import annotations

import re

from app.prompt.segments import Message

_START = re.compile(r"^[^\S\n]*<START>[^\S\n]*$", re.IGNORECASE | re.MULTILINE)


def parse_examples(text: str, user: str, char: str) -> list[list[Message]]:
    """Blocks of turns. `text` has its macros expanded already, so speakers appear by name."""
    blocks: list[list[Message]] = []
    speakers = ((f"{user}:", "user"), (f"{char}:", "assistant"))
    for raw in _START.split(text or ""):
        turns: list[tuple[str, list[str]]] = []
        for line in raw.strip("\n").splitlines():
            role = None
            for prefix, r in speakers:
                if line.startswith(prefix):
                    role, line = r, line[len(prefix) :].lstrip()
                    break
            if role is not None:
                turns.append((role, [line]))
            elif turns:
                turns[-1][1].append(line)
        messages = [Message(role, "\n".join(lines).strip()) for role, lines in turns]
        messages = [m for m in messages if m.content]
        if messages:
            blocks.append(messages)
    return blocks
