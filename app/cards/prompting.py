"""What a card puts into the prompt: the character block, examples, greetings, post-history.

The pinned block follows SillyTavern's default story string: the system prompt (a
card's own replaces the global one, with `{{original}}` standing for it), the
description, "{{char}}'s personality: …", "Scenario: …", then the user's persona.
Macros in the pinned block are expanded once per chat, so that `{{random}}` or
`{{time}}` there do not change the prompt's start every turn (which would force
the whole conversation to be evaluated again).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from app.cards.card import Card
from app.cards.examples import parse_examples
from app.cards.lorebook import Activation, Lorebook, activate, unique_books
from app.cards.macros import MacroContext, expand
from app.errors import CatteryError
from app.prompt.segments import Message


@dataclass
class Persona:
    name: str = "User"
    description: str = ""


@dataclass
class CardPrompt:
    char: str
    user: str
    system: str  # the pinned block with no lore entries active
    examples: list[list[Message]]
    greetings: list[str]
    post_history: str | None
    context: MacroContext
    parts: tuple[str, str, str] = ("", "", "")  # system prompt, character, persona
    # SillyTavern's "Character's Note" (`extensions.depth_prompt`): (text, depth, role), put into
    # the chat at its depth every turn; None when the card has none.
    depth_prompt: tuple[str, int, str] | None = None

    def pinned(self, before: Sequence[str] = (), after: Sequence[str] = ()) -> str:
        """The pinned block with lore entries before and after the character, as SillyTavern places them."""
        system, character, persona = self.parts
        blocks = [system, *before, character, *after, persona]
        return "\n".join(b.strip() for b in blocks if b and b.strip())


def card_prompt(
    card: Card,
    *,
    global_system: str = "",
    global_post_history: str = "",
    prefer_card: bool = True,
    persona: Persona | None = None,
    chat_seed: int = 0,
) -> CardPrompt:
    """The card's part of the prompt. Its own system prompt and post-history instructions replace the
    global ones (`prefer_card`, SillyTavern's "Prefer Char. Prompt"/"Prefer Char. Instructions"), with
    `{{original}}` in them standing for the global one, macros expanded; without `prefer_card` the card's
    own are not used at all, as in SillyTavern."""
    persona = persona or Persona()
    d = card.data
    ctx = MacroContext(char=card.display_name, user=persona.name, chat_seed=chat_seed)
    main, main_post = expand(global_system, ctx), expand(global_post_history, ctx)
    ctx.original = main  # lore entries and notes expanded later see the global prompt too

    def own(key: str, fallback: str) -> str:
        text = d[key] if prefer_card else ""
        return expand(text, ctx) if text.strip() else fallback

    system = own("system_prompt", main)
    character = "\n".join(
        p
        for p in [
            expand(d["description"], ctx).strip(),
            f"{ctx.char}'s personality: {expand(d['personality'], ctx)}" if d["personality"].strip() else "",
            f"Scenario: {expand(d['scenario'], ctx)}" if d["scenario"].strip() else "",
        ]
        if p
    )
    ctx.original = main_post
    post = own("post_history_instructions", main_post).strip()
    ctx.original = main
    out = CardPrompt(
        char=ctx.char,
        user=persona.name,
        system="",
        examples=parse_examples(expand(d["mes_example"], ctx), persona.name, ctx.char),
        greetings=[expand(g, ctx) for g in [d["first_mes"], *d["alternate_greetings"]] if g.strip()],
        post_history=post or None,
        context=ctx,
        parts=(system, character, expand(persona.description, ctx)),
        depth_prompt=_depth_prompt(d.get("extensions")),
    )
    out.system = out.pinned()
    return out


def _depth_prompt(extensions: object) -> tuple[str, int, str] | None:
    """The card's Character's Note, as SillyTavern writes it: {prompt, depth, role}; anything odd is none."""
    value = extensions.get("depth_prompt") if isinstance(extensions, dict) else None
    if not isinstance(value, dict) or not isinstance(value.get("prompt"), str) or not value["prompt"].strip():
        return None
    depth = value.get("depth", 4)
    if isinstance(depth, bool) or not isinstance(depth, int | float) or depth != depth:
        depth = 4
    role = value.get("role") if value.get("role") in ("system", "user", "assistant") else "system"
    return value["prompt"], int(max(0, min(10_000, depth))), str(role)


def plain_prompt(system: str | None, user: str, char: str) -> CardPrompt:
    """A chat without a character, in the shape of one: the pinned block is the system prompt,
    so lorebooks and macros work the same with and without a card."""
    ctx = MacroContext(char=char, user=user, original=system or "")
    return CardPrompt(
        char=char,
        user=user,
        system=system or "",
        examples=[],
        greetings=[],
        post_history=None,
        context=ctx,
        parts=(system or "", "", ""),
    )


class LoreSession:
    """Lorebook activation for a chat: which entries are on, and where their text goes.

    `placement="card"` puts entries before or after the character in the pinned block,
    as SillyTavern does: free while the active entries stay the same, but a change
    rewrites the prompt near its start, so the whole chat after it is evaluated again.
    `placement="end"` puts them in one block right before the reply: that block is
    evaluated again every turn, the chat never (bench/lorebook.py measures both).

    Entries a book places inside the chat (at a depth) or around the Author's Note are
    not in either: after each call they wait in `at_depth`, `before_note` and
    `after_note` (expanded), for whoever inserts messages into the chat.
    """

    def __init__(
        self,
        card: CardPrompt,
        books: Sequence[Lorebook],
        placement: str = "card",
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        if placement not in ("card", "end"):
            raise CatteryError(f"lore placement must be card or end, not {placement!r}")
        self.card = card
        self.books = unique_books(books)
        self.placement = placement
        self.count_tokens = count_tokens
        self.active: list[Activation] = []
        self.at_depth: list[tuple[Activation, str]] = []
        self.before_note: list[str] = []
        self.after_note: list[str] = []

    def __call__(self, history: Sequence[Message]) -> tuple[str, str]:
        """(pinned block, text to put right before the reply) for this history."""
        self.active = activate(self.books, [m.content for m in history], count_tokens=self.count_tokens)
        texts = [(a, expand(a.entry.content, self.card.context)) for a in self.active]
        texts = [(a, t) for a, t in texts if t.strip()]
        self.at_depth = [(a, t) for a, t in texts if a.entry.position == "at_depth"]
        self.before_note = [t for a, t in texts if a.entry.position == "before_note"]
        self.after_note = [t for a, t in texts if a.entry.position == "after_note"]
        around = [(a.entry.position, t) for a, t in texts if a.entry.position in ("before_char", "after_char")]
        if self.placement == "end":
            return self.card.pinned(), "\n".join(t for _, t in around)
        before = [t for pos, t in around if pos == "before_char"]
        after = [t for pos, t in around if pos == "after_char"]
        return self.card.pinned(before, after), ""
