"""Messages put into the chat for one prompt only: the Author's Note, lorebook entries at a depth.

SillyTavern calls this "in-chat @ depth": a text goes in as a message of its own, with
a role, that many messages from the end (0: after the last message, right before the
reply). It is never stored and never pinned: it belongs to the tail of the prompt,
so only the messages after it are evaluated again when it moves, and the sliding
window never evicts it (when fewer messages than its depth are left in the window, it
goes first in the window).

Several texts at the same depth and role are one message, joined by lines; at one
depth the roles come in SillyTavern's order (assistant, user, then system last, nearest
the reply).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from app.prompt.segments import ROLES, Message

_ROLE_ORDER = {"assistant": 0, "user": 1, "system": 2}


@dataclass(frozen=True)
class Injection:
    depth: int  # how many of the chat's messages come after it
    role: str  # system, user or assistant
    text: str
    kind: str = "author_note"  # character_note, lore: what `cattery prompt --json` calls it


@dataclass
class Dynamic:
    """What a chat's prompt gets at each build besides the stored messages (see PromptBuilder.dynamic)."""

    system: str | None = None  # the pinned block's text
    late: str = ""  # text right before the reply
    injections: list[Injection] = field(default_factory=list)
    keep_system: bool = False  # True: `system` is ignored and the builder's own system prompt stays


@dataclass(frozen=True)
class Placed:
    """Injections merged into one message, and where it went."""

    at: int  # index in the whole history of the message it goes before (len(history): after the last)
    depth: int
    role: str
    text: str
    kinds: tuple[str, ...]


@dataclass(frozen=True)
class Slot:
    """What one rendered message of a window is: a stored message (its index) or a placed injection."""

    index: int | None
    placed: Placed | None = None
    folded: tuple[Placed, ...] = ()  # injections written into this message (a template that refused them)


def place(injections: Sequence[Injection], n_history: int) -> list[Placed]:
    """The injections as messages, in the order they appear, with where each goes in the history."""
    groups: dict[tuple[int, str], list[Injection]] = {}
    for inj in injections:
        if inj.text.strip() and inj.role in ROLES:
            groups.setdefault((max(0, inj.depth), inj.role), []).append(inj)
    placed = [
        Placed(
            at=max(0, n_history - depth),
            depth=depth,
            role=role,
            text="\n".join(i.text.strip() for i in items),
            kinds=tuple(dict.fromkeys(i.kind for i in items)),
        )
        for (depth, role), items in groups.items()
    ]
    return sorted(placed, key=lambda p: (p.at, _ROLE_ORDER[p.role]))


def splice(history: Sequence[Message], start: int, placed: Sequence[Placed]) -> tuple[list[Message], list[Slot]]:
    """The window `history[start:]` with the placed messages in it; an injection deeper than the
    window goes first in it."""
    before: dict[int, list[Placed]] = {}
    for p in placed:
        before.setdefault(max(p.at, start), []).append(p)
    messages: list[Message] = []
    slots: list[Slot] = []
    for i in range(start, len(history) + 1):
        for p in before.get(i, []):
            messages.append(Message(p.role, p.text))
            slots.append(Slot(None, p))
        if i < len(history):
            messages.append(history[i])
            slots.append(Slot(i))
    return messages, slots


def fold(messages: Sequence[Message], slots: Sequence[Slot]) -> tuple[list[Message], list[Slot], list[Placed]]:
    """For a chat template that refuses a message where an injection goes (roles must alternate):
    each injection's text opens the next user message, or else closes the last user message
    before it. What has no user message to go into is left out (returned)."""
    msgs = list(messages)
    out_slots = list(slots)
    left: list[Placed] = []
    for k in [k for k, s in enumerate(slots) if s.placed is not None]:
        placed = slots[k].placed
        assert placed is not None
        users = [j for j, s in enumerate(out_slots) if s.index is not None and msgs[j].role == "user"]
        after = next((j for j in users if j > k), None)
        target = after if after is not None else next((j for j in reversed(users) if j < k), None)
        if target is None:
            left.append(placed)
            continue
        m = msgs[target]
        text = f"{placed.text}\n\n{m.content}" if target == after else f"{m.content}\n\n{placed.text}"
        msgs[target] = Message(m.role, text, m.name)
        s = out_slots[target]
        out_slots[target] = Slot(s.index, None, (*s.folded, placed))
    keep = [k for k, s in enumerate(out_slots) if s.placed is None]
    return [msgs[k] for k in keep], [out_slots[k] for k in keep], left
