"""Everything a chat is made from, in one place: settings, the libraries, the chat store.

The command line and the full-screen app build chats the same way through this
module: the same model is picked, the same card resolved, the same sampler and
prompt recipe made from the settings and the user's overrides.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import CatteryError, ModelFileError
from app.paths import Paths, get_paths
from app.session.recipe import PromptRecipe
from app.settings import Settings

if TYPE_CHECKING:
    from app.cards.card import Card
    from app.cards.library import CardLibrary
    from app.cards.lore_library import LoreLibrary
    from app.chats.store import ChatStore
    from app.engine.metadata import ModelInfo
    from app.engine.options import LoadOptions, SamplerSettings
    from app.hub.library import LibraryEntry
    from app.prompt.builder import FormatChoice
    from app.session.authors_note import AuthorsNote
    from app.session.characters import CharacterEntry
    from app.session.lore import ChatLore
    from app.session.snapshots import SnapshotStore

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


class RememberedModelGone(ModelFileError):
    """The model the settings name (`[model] default`, or `last_used`: the one used last time) cannot be
    found any more. The message says which and why; how to pick another is the caller's to add, in its
    own terms (a command-line option, a screen's key)."""

    def __init__(self, key: str, ref: str, reason: str) -> None:
        self.key, self.ref = key, ref
        what = "the last used model" if key == "last_used" else "the default model ([model] default)"
        reason = reason.removeprefix(f"{ref}: ")
        super().__init__(f"{what} {ref} cannot be used: {reason}")


@dataclass
class ModelLoad:
    """A model to load for a chat (`Workspace.model_load`): what `Engine.load` takes, and the format
    to ask `Workspace.chat_format` for once the model's metadata is read."""

    path: Path
    options: LoadOptions
    format: str | None  # asked for, else saved for this file; None: the settings' or the model's own
    default_ctx: int  # the context when neither the options nor the saved settings name one


class Workspace:
    """Paths, settings and the libraries; opened once per run."""

    def __init__(self, paths: Paths | None = None, settings: Settings | None = None) -> None:
        self.paths = paths or get_paths()
        self.settings = settings or Settings.load(self.paths.settings_file)

    # -- stores and libraries --------------------------------------------------------

    @cached_property
    def store(self) -> ChatStore:
        from app.chats.store import ChatStore

        return ChatStore(self.paths.chats_db, busy_timeout=self.settings.chats.busy_timeout)

    @cached_property
    def snapshots(self) -> SnapshotStore:
        """The chats' KV-cache snapshots on disk (app/session/snapshots.py), under the settings' limit."""
        from app.session.snapshots import SnapshotStore

        return SnapshotStore(self.paths.snapshots_dir, self.settings.snapshots.disk_limit_mb << 20)

    def delete_chat(self, chat_id: int) -> None:
        """A chat and what is kept for it beside the database (its KV snapshot). Refused (one line)
        while a line chat writes into it."""
        from app.instance import line_chat_holding

        holder = line_chat_holding(self.paths.data_dir, chat_id)
        if holder is not None:
            raise CatteryError(f"chat {chat_id} is open in {holder.where()}: leave that chat first, then delete it")
        self.store.delete_chat(chat_id)
        self.snapshots.remove(chat_id)

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

    def settings_path(self, text: str) -> Path:
        """A path read from the settings file. A relative one is relative to that file's folder, never
        to wherever Cattery happens to be started from (which would make it mean another file each time)."""
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.paths.settings_file.parent / path

    @staticmethod
    def stored_path(path: Path | str) -> str:
        """A path as Cattery writes it into the settings: absolute, so it means the same file from any folder.
        Links are kept as they are (a Hugging Face cache's snapshot link names the model; its blob does not)."""
        return os.path.abspath(Path(path).expanduser())

    def model_dirs(self) -> list[Path]:
        return [self.paths.models_dir, *(self.settings_path(d) for d in self.settings.model.dirs)]

    def add_model_dir(self, folder: Path | str) -> str | None:
        """Remember a folder of models (absolute); the error line when the settings cannot be saved."""
        stored = self.stored_path(folder)
        dirs = list(self.settings.model.dirs)
        if stored in dirs or any(self.settings_path(d) == Path(stored) for d in dirs):
            return None
        self.settings.set("model", "dirs", [*dirs, stored])
        return self.save_settings()

    def models(self) -> list[LibraryEntry]:
        from app.hub.library import library_entries

        return library_entries(self.model_dirs())

    def resolve_model(self, ref: str | None) -> Path:
        """The file a model reference names (a path, a library name, `owner/repo[:QUANT]` in the HF cache),
        as an absolute path: the one resolver every command and screen uses."""
        from app.hub.library import resolve_model

        return Path(self.stored_path(resolve_model(ref, self.model_dirs())))

    def pick_model(self, explicit: str | None = None) -> Path:
        """The model asked for; else the settings' default; else the last one used; else the bundled one.

        A default or last used model that cannot be found is an error (`RememberedModelGone`), never a
        quiet switch to another model: the user would chat with a model they did not choose.
        """
        if explicit:
            return self.resolve_model(explicit)
        for key in ("default", "last_used"):
            ref = getattr(self.settings.model, key)
            if not ref:
                continue
            try:
                return self.resolve_model(ref)
            except CatteryError as exc:
                raise RememberedModelGone(key, ref, str(exc)) from None
        return self.resolve_model(None)

    def remember_model(self, path: Path) -> str | None:
        """The model to open next time: stored as an absolute path, so any folder finds it."""
        stored = self.stored_path(path)
        if self.settings.model.last_used == stored:
            return None
        self.settings.set("model", "last_used", stored)
        return self.save_settings()

    def load_options(self, overrides: dict[str, Any] | None = None) -> LoadOptions:
        """Load options from the settings, with the user's explicit choices (None: not given) on top."""
        from app.engine.options import LoadOptions, parse_gpu_layers

        over = {k: v for k, v in (overrides or {}).items() if v is not None}
        opts = LoadOptions.from_settings(self.settings.model)
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
        return self.settings.model.ctx

    def model_load(
        self, model: Path | str | None, overrides: dict[str, Any] | None = None, fmt: str | None = None
    ) -> ModelLoad:
        """How a chat loads a model, the same for the command line and the app: the file (`pick_model`
        for a reference), the settings saved for that file on the Models screen under the caller's
        overrides (None: not given), and the format asked for, else the one saved for the file.
        The options are not checked here: `Engine.load` checks them (the app checks them first, to
        show a bad value on its model line before its loading worker starts)."""
        path = model if isinstance(model, Path) else self.pick_model(model)
        saved = self.saved_load_settings(path)
        wanted = fmt or saved.pop("format", None)
        saved.pop("format", None)
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        return ModelLoad(path, self.load_options({**saved, **given}), wanted or None, self.default_ctx)

    def chat_format(self, path: Path | None, info: ModelInfo | None, explicit: str | None = None) -> FormatChoice:
        """The prompt format a chat uses with this model: the one asked for; else the one chosen for this
        file on the Models screen; else the settings' `[chat] format`; else the model's own template, a
        guess from its name, or ChatML. `cattery prompt` and `formats lint` ask the same, so they show
        what a chat would send."""
        from app.prompt.builder import choose_format

        saved = self.saved_load_settings(path).get("format") if path is not None else None
        wanted = explicit or saved or self.settings.chat.format or None
        return choose_format(wanted, info)

    def chat_context(self, path: Path, info: ModelInfo, overrides: dict[str, Any] | None = None) -> int:
        """The context a chat loads this model with (the saved settings for the file, the command line's
        on top), as the engine chooses it, without loading anything."""
        from app.engine.preflight import choose_ctx

        plan = self.model_load(path, overrides)
        return choose_ctx(info, plan.options, plan.default_ctx)

    # -- sampling --------------------------------------------------------------------

    def sampler(self, preset: str | None = None, overrides: dict[str, Any] | None = None) -> SamplerSettings:
        from app.engine.options import SamplerSettings, load_preset

        sampler = load_preset(preset or self.settings.chat.preset)
        sampler = SamplerSettings.from_mapping(dict(self.settings.section("sampler")), sampler)
        sampler.max_tokens = self.settings.chat.max_tokens
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
        ref = self.settings.chat.card
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
        card_ref: str | None = None,
        chat_id: int | None = None,
        note: AuthorsNote | None = None,
    ) -> PromptRecipe:
        """The prompt recipe for a chat; `None` arguments come from the settings.

        `card_ref` and `chat_id` bring in the lorebooks attached to the character and to
        the chat, and the system-prompt preset chosen for either (`session/system_prompt.py`);
        `system` (the command line's) overrides every choice. `note` is the chat's Author's Note.
        """
        from app.cards.macros import MacroContext, expand
        from app.cards.prompting import Persona, card_prompt
        from app.session.system_prompt import resolve_system

        s = self.settings
        choice = resolve_system(self, system=system, card_ref=card_ref, chat_id=chat_id)
        user = user or s.persona.name
        char = char or s.chat.char_name
        placement = lore_placement or s.lore.placement
        pin = s.chat.pin_examples
        lore = self.chat_lore(card, card_ref=card_ref, chat_id=chat_id, command_line=lorebooks or [])
        lore.warnings[:0] = choice.warnings
        where = {"system_preset": choice.preset, "system_scope": choice.scope}
        if card is None:
            # Macros in the system prompt mean what they mean with a card ({{char}}: the model's name).
            ctx = MacroContext(char=char, user=user, chat_seed=chat_seed)
            system_text = expand(choice.text or "", ctx) or None
            post = expand(choice.post_history or "", ctx).strip() or None
            return PromptRecipe(
                system_text, user, char, None, lore.lorebooks, placement, pin, None,
                lore=lore, note=note, post_history=post, **where,
            )  # fmt: skip
        persona = Persona(user, s.persona.description)
        cp = card_prompt(
            card,
            global_system=choice.text or "",
            global_post_history=choice.post_history or "",
            prefer_card=s.chat.prefer_card_prompt,
            persona=persona,
            chat_seed=chat_seed,
        )
        return PromptRecipe(
            cp.system or None, cp.user, cp.char, cp, lore.lorebooks, placement, pin, card, lore=lore, note=note, **where
        )

    # -- World Info ------------------------------------------------------------------

    @cached_property
    def lore_library(self) -> LoreLibrary:
        from app.cards.lore_library import LoreLibrary

        return LoreLibrary(self.paths.lorebooks_dir)

    def lorebook_path(self, ref: str, scope: str = "command line") -> Path:
        """The file a lorebook reference names: a library book, else a path (in the settings, relative
        to the settings file's folder; elsewhere, to the current folder)."""
        if scope == "global" and self.lore_library.path(ref) is None:
            ref = str(self.settings_path(ref))
        return self.lore_library.resolve(ref)

    def chat_lore(
        self,
        card: Card | None,
        *,
        card_ref: str | None = None,
        chat_id: int | None = None,
        command_line: list[str] | None = None,
    ) -> ChatLore:
        """Every lorebook of a chat, each once, with where it was attached (app/session/lore.py)."""
        from app.session.lore import gather_lore

        character: list[str] = []
        chat: list[str] = []
        problems: list[str] = []
        if (card_ref is not None or chat_id is not None) and self.paths.chats_db.exists():
            try:  # attachments live in the chat database; a chat must open even when it cannot be read
                character = self.store.card_lorebooks(card_ref) if card_ref else []
                chat = self.store.chat_lorebooks(chat_id) if chat_id is not None else []
            except CatteryError as exc:
                problems.append(f"the lorebooks attached to this chat and character are skipped: {exc}")
        lore = gather_lore(
            self.lorebook_path,
            card=card,
            character=character,
            chat=chat,
            everywhere=list(self.settings.chat.lorebooks),
            command_line=command_line or [],
        )
        lore.warnings[:0] = problems
        return lore

    def global_lorebooks(self) -> list[str]:
        return list(self.settings.chat.lorebooks)

    def set_global_lorebook(self, ref: str, attached: bool) -> str | None:
        """Attach a book to every chat (or not): `[chat] lorebooks` in the settings; the error line
        when the settings cannot be saved."""
        books = self.global_lorebooks()
        if attached == (ref in books):
            return None
        books = [*books, ref] if attached else [b for b in books if b != ref]
        self.settings.set("chat", "lorebooks", books)
        return self.save_settings()
