"""What a card puts into the prompt: the character block, examples, greetings, post-history.

The pinned block follows SillyTavern's default story string: the system prompt (a
card's own replaces the global one, with `{{original}}` standing for it), the
description, "{{char}}'s personality: …", "Scenario: …", then the user's persona.
Macros in the pinned block are expanded once per chat, so that `{{random}}` or
`{{time}}` there do not change the prompt's start every turn (which would force
the whole conversation to be evaluated again).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.cards.card import Card
from app.cards.examples import parse_examples
from app.cards.macros import MacroContext, expand
from app.prompt.segments import Message


@dataclass
class Persona:
    name: str = "User"
    description: str = ""


@dataclass
class CardPrompt:
    char: str
    user: str
    system: str
    examples: list[list[Message]]
    greetings: list[str]
    post_history: str | None
    context: MacroContext


def card_prompt(
    card: Card, *, global_system: str = "", persona: Persona | None = None, chat_seed: int = 0
) -> CardPrompt:
    persona = persona or Persona()
    d = card.data
    ctx = MacroContext(char=card.display_name, user=persona.name, original=global_system, chat_seed=chat_seed)
    system = expand(d["system_prompt"], ctx) if d["system_prompt"].strip() else expand(global_system, ctx)
    parts = [
        system,
        expand(d["description"], ctx),
        f"{ctx.char}'s personality: {expand(d['personality'], ctx)}" if d["personality"].strip() else "",
        f"Scenario: {expand(d['scenario'], ctx)}" if d["scenario"].strip() else "",
        expand(persona.description, ctx),
    ]
    post = expand(d["post_history_instructions"].replace("{{original}}", ""), ctx).strip()
    return CardPrompt(
        char=ctx.char,
        user=persona.name,
        system="\n".join(p.strip() for p in parts if p and p.strip()),
        examples=parse_examples(expand(d["mes_example"], ctx), persona.name, ctx.char),
        greetings=[expand(g, ctx) for g in [d["first_mes"], *d["alternate_greetings"]] if g.strip()],
        post_history=post or None,
        context=ctx,
    )
