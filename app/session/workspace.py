"""Everything a chat is made from, in one place: settings, the libraries, the chat store.

The command line and the full-screen app build chats the same way through this
module: the same model is picked, the same card resolved, the same sampler and
prompt recipe made from the settings and the user's overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import CatteryError
from app.paths import Paths, get_paths
from app.settings import Settings

if TYPE_CHECKING:
    from app.cards.card import Card
    from app.cards.library import CardLibrary
    from app.cards.lorebook import Lorebook
    from app.cards.prompting import CardPrompt
    from app.chats.store import ChatStore
    from app.engine.metadata import ModelInfo
    from app.engine.options import LoadOptions, SamplerSettings
    from app.hub.library import LibraryEntry
    from app.prompt.builder import PromptBuilder
    from app.prompt.tokens import SegmentTokenizer
    from app.session.characters import CharacterEntry

SAMPLER_KEYS = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "seed",
    "max_tokens",
)
LOAD_KEYS = (
    "threads",
    "threads_batch",
    "batch",
    "flash_attn",
    "cache_type_k",
    "cache_type_v",
    "rope_freq_base",
    "rope_scale",
)


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

    @property
    def greetings(self) -> list[str]:
        return list(self.card.greetings) if self.card is not None else []

    def builder(self, fmt: str, info: ModelInfo | None, tokenizer: SegmentTokenizer | None) -> PromptBuilder:
        from app.cards.prompting import LoreSession
        from app.prompt.builder import PromptBuilder
        from app.prompt.segments import Speakers

        if self.card is None:
            return PromptBuilder(
                fmt, info=info, tokenizer=tokenizer, system=self.system, speakers=Speakers(self.user, self.char)
            )
        cp = self.card
        lore = None
        if self.books:
            lore = LoreSession(cp, self.books, self.lore_placement, tokenizer.count if tokenizer is not None else None)
        return PromptBuilder(
            fmt,
            info=info,
            tokenizer=tokenizer,
            system=cp.system or None,
            speakers=Speakers(cp.user, cp.char),
            examples=cp.examples,
            post_history=cp.post_history,
            dynamic=lore,
            pin_examples=self.pin_examples,
        )


class Workspace:
    """Paths, settings and the libraries; opened once per run."""

    def __init__(self, paths: Paths | None = None, settings: Settings | None = None) -> None:
        self.paths = paths or get_paths()
        self.settings = settings or Settings.load(self.paths.settings_file)

    # -- stores and libraries --------------------------------------------------------

    @cached_property
    def store(self) -> ChatStore:
        from app.chats.store import ChatStore

        return ChatStore(self.paths.chats_db, busy_timeout=float(self.settings.get("chats", "busy_timeout", 10.0)))

    @cached_property
    def cards(self) -> CardLibrary:
        from app.cards.library import CardLibrary

        return CardLibrary(self.paths.cards_dir)

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()

    def save_settings(self) -> str | None:
        """Write the settings file; the error line when it cannot be written."""
        try:
            self.settings.save()
        except CatteryError as exc:  # a full disk, a read-only folder, a file now broken by hand
            return str(exc)
        return None

    # -- models ----------------------------------------------------------------------

    def model_dirs(self) -> list[Path]:
        return [self.paths.models_dir, *(Path(d).expanduser() for d in self.settings.get("model", "dirs", []))]

    def models(self) -> list[LibraryEntry]:
        from app.hub.library import library_entries

        return library_entries(self.model_dirs())

    def resolve_model(self, ref: str | None) -> Path:
        from app.hub.library import resolve_model

        return resolve_model(ref, self.model_dirs())

    def pick_model(self, explicit: str | None = None) -> Path:
        """The model asked for; else the settings' default; else the last one used; else the bundled one."""
        if explicit:
            return self.resolve_model(explicit)
        for key in ("default", "last_used"):
            ref = self.settings.get("model", key, "")
            if ref:
                try:
                    return self.resolve_model(ref)
                except CatteryError:
                    if key == "default":
                        raise
        return self.resolve_model(None)

    def remember_model(self, path: Path) -> str | None:
        if self.settings.get("model", "last_used", "") == str(path):
            return None
        self.settings.set("model", "last_used", str(path))
        return self.save_settings()

    def load_options(self, overrides: dict[str, Any] | None = None) -> LoadOptions:
        """Load options from the settings, with the user's explicit choices (None: not given) on top."""
        from app.engine.options import LoadOptions, parse_gpu_layers

        over = {k: v for k, v in (overrides or {}).items() if v is not None}
        opts = LoadOptions.from_settings(self.settings.section("model"))
        opts.ctx = over.get("ctx")  # the settings' ctx is the default, not a request
        if "gpu_layers" in over:
            opts.gpu_layers = parse_gpu_layers(over["gpu_layers"])
        for name in (*LOAD_KEYS, "mmap", "mlock", "check_memory"):
            if name in over:
                setattr(opts, name, over[name])
        return opts

    def saved_load_settings(self, path: Path) -> dict[str, Any]:
        """What the user chose for this model file last time on the Models screen (LM Studio remembers too)."""
        value = self.settings.section("model_settings").get(Path(path).name, {})
        return dict(value) if isinstance(value, dict) else {}

    def save_load_settings(self, path: Path, values: dict[str, Any]) -> str | None:
        clean = {k: v for k, v in values.items() if v is not None and v != ""}
        self.settings.set("model_settings", Path(path).name, clean)
        return self.save_settings()

    @property
    def default_ctx(self) -> int:
        return int(self.settings.get("model", "ctx", 4096) or 4096)

    # -- sampling --------------------------------------------------------------------

    def sampler(self, preset: str | None = None, overrides: dict[str, Any] | None = None) -> SamplerSettings:
        from app.engine.options import SamplerSettings, load_preset

        sampler = load_preset(preset or self.settings.get("chat", "preset", "default"))
        sampler = SamplerSettings.from_mapping(dict(self.settings.section("sampler")), sampler)
        sampler.max_tokens = int(self.settings.get("chat", "max_tokens", sampler.max_tokens))
        changes = {k: v for k, v in (overrides or {}).items() if v is not None and k in SAMPLER_KEYS}
        sampler = sampler.updated(**changes)
        if (overrides or {}).get("ban_eos"):
            sampler.ban_eos = True
        sampler.validate()
        return sampler

    # -- characters and prompts ---------------------------------------------------------

    def characters(self) -> list[CharacterEntry]:
        from app.session.characters import all_characters

        return all_characters(self.cards)

    def resolve_character(self, ref: str | None) -> tuple[str | None, Card | None]:
        from app.session.characters import resolve_character

        return resolve_character(ref, self.cards)

    def default_character(self) -> str | None:
        ref = self.settings.get("chat", "card", "")
        return ref or None

    def recipe(
        self,
        card: Card | None,
        *,
        system: str | None = None,
        user: str | None = None,
        char: str | None = None,
        lorebooks: list[str] | None = None,
        lore_placement: str | None = None,
        chat_seed: int = 0,
    ) -> PromptRecipe:
        """The prompt recipe for a chat; `None` arguments come from the settings."""
        from app.cards.lorebook import book_from_spec, read_lorebook
        from app.cards.prompting import Persona, card_prompt

        s = self.settings
        if system is None:
            system = s.get("chat", "system", "") or None
        user = user or s.get("persona", "name", "User")
        char = char or s.get("chat", "char_name", "Assistant")
        placement = lore_placement or s.get("lore", "placement", "card")
        pin = bool(s.get("chat", "pin_examples", False))
        if card is None:
            return PromptRecipe(system, user, char, lore_placement=placement, pin_examples=pin)
        persona = Persona(user, s.get("persona", "description", ""))
        cp = card_prompt(card, global_system=system or "", persona=persona, chat_seed=chat_seed)
        books = []
        if isinstance(card.data.get("character_book"), dict):
            books.append(book_from_spec(card.data["character_book"], card.name))
        for ref in [*s.get("chat", "lorebooks", []), *(lorebooks or [])]:
            books.append(read_lorebook(Path(ref).expanduser()))
        return PromptRecipe(cp.system or None, cp.user, cp.char, cp, books, placement, pin, card)
