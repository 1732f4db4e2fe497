"""The prompt recipe: the hinge between a character card and a prompt builder.

A card is read and normalised (app/cards), turned into a `CardPrompt` (its system block,
examples, greetings and macros for this user), and gathered with the chat's lorebooks and
Author's Note into a `PromptRecipe` (`Workspace.recipe`). The recipe knows everything about
the prompt except the model; once one is loaded, `PromptRecipe.builder` makes the
`PromptBuilder` for its format and tokenizer, and the builder turns each turn's history
into token segments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.cards.card import Card
    from app.cards.lorebook import Lorebook
    from app.cards.prompting import CardPrompt
    from app.engine.metadata import ModelInfo
    from app.prompt.builder import PromptBuilder
    from app.prompt.tokens import SegmentTokenizer
    from app.session.authors_note import AuthorsNote
    from app.session.lore import ChatExtras, ChatLore


@dataclass
class PromptRecipe:
    """What a chat's prompt is made of, except the model: the builder is made once a model is loaded."""

    system: str | None
    user: str
    char: str
    card: CardPrompt | None = None
    books: list[Lorebook] = field(default_factory=list)
    lore_placement: str = "card"
    pin_examples: bool = False
    source: Card | None = None  # the card itself: its avatar, its other fields for the screens
    lore: ChatLore | None = None  # the books with where each was attached, and the ones skipped
    note: AuthorsNote | None = None  # the chat's Author's Note
    post_history: str | None = None  # a system-prompt preset's post-history instructions (no card)
    system_preset: str | None = None  # the preset the system prompt came from, if one
    system_scope: str = "settings"  # where it was chosen: "command line", "chat", "character", "settings"

    @property
    def greetings(self) -> list[str]:
        return list(self.card.greetings) if self.card is not None else []

    def extras(self, tokenizer: SegmentTokenizer | None = None) -> ChatExtras | None:
        """The prompt's dynamic part (lore, the Author's Note); None when there is neither."""
        from app.cards.prompting import LoreSession, plain_prompt
        from app.session.lore import ChatExtras

        if not self.books and self.note is None and (self.card is None or self.card.depth_prompt is None):
            return None
        cp = self.card or plain_prompt(self.system, self.user, self.char)
        lore = None
        if self.books:
            lore = LoreSession(cp, self.books, self.lore_placement, tokenizer.count if tokenizer is not None else None)
        return ChatExtras(cp, lore, self.note)

    def builder(self, fmt: str, info: ModelInfo | None, tokenizer: SegmentTokenizer | None) -> PromptBuilder:
        from app.prompt.builder import PromptBuilder
        from app.prompt.segments import Speakers

        extras = self.extras(tokenizer)
        if self.card is None:
            return PromptBuilder(
                fmt,
                info=info,
                tokenizer=tokenizer,
                system=self.system,
                speakers=Speakers(self.user, self.char),
                post_history=self.post_history,
                dynamic=extras,
            )
        cp = self.card
        return PromptBuilder(
            fmt,
            info=info,
            tokenizer=tokenizer,
            system=cp.system or None,
            speakers=Speakers(cp.user, cp.char),
            examples=cp.examples,
            post_history=cp.post_history,
            dynamic=extras,
            pin_examples=self.pin_examples,
        )
