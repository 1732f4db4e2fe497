"""A chat in progress: its stored messages, its character's prompt, the window, the model.

Every change goes to the chat store at once, and every turn (a reply, a regenerated
or continued reply, an impersonated user line) is a generation whose result is
committed the moment it ends, from the thread that consumed it. Nothing here knows
about the screen: the full-screen app calls these methods from its workers and
shows what they return.

Threads: one turn at a time runs (the app enforces it); `lock` keeps prompt builds
and message changes from interleaving between the UI thread and a worker.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.chats.store import ChatStore, StoredMessage
from app.engine.options import SamplerSettings
from app.errors import CatteryError
from app.prompt.builder import BuiltPrompt, FormatChoice, Opening
from app.prompt.segments import Message
from app.prompt.window import WindowState

if TYPE_CHECKING:
    from app.engine.engine import Engine, Generation
    from app.engine.stats import GenerationStats
    from app.prompt.builder import PromptBuilder
    from app.session.workspace import PromptRecipe, Workspace

TURN_KINDS = ("reply", "regenerate", "continue", "impersonate")


@dataclass
class Turn:
    """One generation for this chat and where its text goes when it ends."""

    kind: str  # reply, regenerate, continue, impersonate
    target: int | None  # index of the message it writes into (regenerate, continue)
    built: BuiltPrompt
    generation: Generation
    prefix: str = ""  # text the reply already had (continue)
    started: float = field(default_factory=time.time)

    def cancel(self) -> None:
        self.generation.cancel()


@dataclass
class Outcome:
    """What a finished turn left: the text, where it was saved, and its statistics."""

    kind: str
    text: str
    stopped: bool
    stats: GenerationStats | None
    index: int | None  # the message written (None: nothing saved, e.g. impersonation)


@dataclass
class Preview:
    """The context as the next reply would use it: the numbers the status bar shows."""

    n_ctx: int
    pinned: int
    history: int
    reserve: int
    first_kept: int  # messages before this index have left the window
    to_evaluate: int  # tokens the next reply evaluates besides the user's new message
    reused: int

    @property
    def used(self) -> int:
        return self.pinned + self.history

    @property
    def free(self) -> int:
        return max(0, self.n_ctx - self.used)


def new_chat_seed() -> int:
    """The seed that keeps `{{pick}}` and the pinned block's macros the same for the whole chat."""
    return secrets.randbelow(2**31)


class ChatSession:
    def __init__(self, store: ChatStore, chat_id: int, recipe: PromptRecipe, sampler: SamplerSettings) -> None:
        info = store.chat(chat_id)
        self.store = store
        self.chat_id = chat_id
        self.title: str = info["title"]
        self.card_ref: str | None = info["card_ref"]
        self.extra: dict[str, Any] = info["extra"]
        self.recipe = recipe
        self.sampler = sampler
        self.lock = threading.RLock()
        self.messages: list[StoredMessage] = store.messages(chat_id)
        self.window = WindowState()
        self.engine: Engine | None = None
        self.builder: PromptBuilder | None = None
        self.format_choice: FormatChoice | None = None
        self.last_built: BuiltPrompt | None = None
        self.last_stats: GenerationStats | None = None

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        store: ChatStore,
        recipe: PromptRecipe,
        sampler: SamplerSettings,
        *,
        card_ref: str | None,
        chat_seed: int,
        greeting: int = 0,
        title: str | None = None,
    ) -> ChatSession:
        """A new chat; a card's greetings open it, as the first message's alternatives."""
        char = recipe.card.char if recipe.card is not None else None
        chat_id = store.create_chat(
            title or time.strftime("%Y-%m-%d %H:%M"),  # the character is shown beside it everywhere
            card_ref,
            char,
            recipe.user,
            extra={"chat_seed": chat_seed},
        )
        greetings = recipe.greetings
        if greetings:
            mid = store.add_message(chat_id, "assistant", greetings[0], alternatives=greetings[1:])
            if 0 < greeting < len(greetings):
                store.select_swipe(mid, greeting)
        return cls(store, chat_id, recipe, sampler)

    @property
    def chat_seed(self) -> int:
        return int(self.extra.get("chat_seed", 0))

    @property
    def char_name(self) -> str:
        return self.recipe.card.char if self.recipe.card is not None else self.recipe.char

    @property
    def user_name(self) -> str:
        return self.recipe.user

    def speaker(self, index: int) -> str:
        m = self.messages[index]
        if m.name:
            return m.name
        return {"user": self.user_name, "assistant": self.char_name}.get(m.role, "System")

    def attach(self, engine: Engine, choice: FormatChoice) -> None:
        """Use a loaded model: the prompt is built for its tokenizer and format from now on."""
        from app.prompt.tokens import tokenizer_from

        builder = self.recipe.builder(choice.name, engine.info, tokenizer_from(engine))
        with self.lock:
            self.engine, self.builder, self.format_choice = engine, builder, choice
            saved = self.extra.get("window") or {}
            report = engine.report
            same = report is not None and saved.get("model") == str(report.path) and saved.get("n_ctx") == engine.n_ctx
            # The window only moves forward; on another model or context it starts over.
            self.window = (
                WindowState(int(saved.get("start", 0)), bool(saved.get("examples_dropped")))
                if same
                else (WindowState())
            )

    def detach(self) -> None:
        with self.lock:
            self.engine = self.builder = self.format_choice = None

    @property
    def ready(self) -> bool:
        return self.builder is not None and self.engine is not None and self.engine.loaded

    # -- reading -----------------------------------------------------------------------

    def reload(self) -> None:
        self.messages = self.store.messages(self.chat_id)

    def history(self, upto: int | None = None) -> list[Message]:
        return [Message(m.role, m.text, m.name) for m in self.messages[:upto]]

    @property
    def reserve(self) -> int:
        n_ctx = self.engine.n_ctx if self.engine is not None else 0
        return min(self.sampler.max_tokens, n_ctx // 2)

    # -- changes -----------------------------------------------------------------------

    def add_user(self, text: str) -> int:
        """Append the user's message (macros expanded, as the card's author meant); its index."""
        from app.cards.macros import expand

        if self.recipe.card is not None:
            text = expand(text, self.recipe.card.context)
        with self.lock:
            self.store.add_message(self.chat_id, "user", text)
            self.reload()
            return len(self.messages) - 1

    def edit(self, index: int, text: str) -> None:
        with self.lock:
            self.store.edit_message(self.messages[index].id, text)
            self.reload()

    def delete(self, index: int, *, and_after: bool = False) -> int:
        """Delete a message (or it and everything after it); how many went."""
        with self.lock:
            count = len(self.messages) - index if and_after else 1
            self.store.delete_message(self.messages[index].id, and_after=and_after)
            if index < self.window.start:
                self.window.start = index if and_after else self.window.start - 1
                self._save_window()
            self.reload()
            return count

    def select_swipe(self, index: int, step: int) -> tuple[int, int] | None:
        """Show the previous or next alternative of a message: (shown, count), or None at either end."""
        with self.lock:
            m = self.messages[index]
            target = m.active + step
            if not 0 <= target < len(m.swipes):
                return None
            self.store.select_swipe(m.id, target)
            self.reload()
            return target, len(m.swipes)

    def branch(self, index: int) -> int:
        """A new chat holding this chat's messages up to and including `index`."""
        with self.lock:
            new_id = self.store.branch(self.chat_id, self.messages[index].id, f"{self.title} (branch)")
            window = {**(self.extra.get("window") or {}), "start": min(self.window.start, index + 1)}
            self.store.update_chat_extra(new_id, window=window)
            return new_id

    def rename(self, title: str) -> None:
        self.store.rename_chat(self.chat_id, title)
        self.title = title

    def save_draft(self, text: str) -> None:
        if text != self.extra.get("draft", ""):
            self.store.update_chat_extra(self.chat_id, draft=text)
            self.extra["draft"] = text  # once stored: a draft the store refused is tried again

    @property
    def draft(self) -> str:
        return str(self.extra.get("draft", ""))

    def _save_window(self) -> None:
        report = self.engine.report if self.engine is not None else None
        window = {
            "start": self.window.start,
            "examples_dropped": self.window.examples_dropped,
            "n_ctx": self.engine.n_ctx if self.engine is not None and self.engine.loaded else None,
            "model": str(report.path) if report is not None else None,
        }
        if window != self.extra.get("window"):
            self.store.update_chat_extra(self.chat_id, window=window)
            self.extra["window"] = window  # once stored, as the draft

    # -- turns -------------------------------------------------------------------------

    def plan_turn(self, kind: str, index: int | None = None) -> tuple[str, int | None]:
        """What a request becomes given the chat as it is: (kind, target message) or an error.

        Regenerating or continuing when the last message is the user's is a plain reply,
        as in SillyTavern; only the last message can be regenerated or continued.
        """
        if kind not in TURN_KINDS:
            raise ValueError(kind)
        msgs = self.messages
        last = len(msgs) - 1
        if kind == "impersonate":
            return kind, None
        if kind == "reply":
            return kind, None
        if last < 0 or msgs[last].role != "assistant":
            return "reply", None
        if index is not None and index != last:
            raise CatteryError("only the last message can be regenerated or continued")
        if kind == "regenerate" and not any(m.role == "user" for m in msgs[:last]):
            raise CatteryError("a greeting is not regenerated: swipe through the card's greetings instead")
        return kind, last

    def begin(self, kind: str, index: int | None = None) -> Turn:
        """Build the prompt and start generating. Blocks only for the prompt build."""
        with self.lock:
            if not self.ready:
                raise CatteryError("no model is loaded yet")
            assert self.engine is not None and self.builder is not None
            kind, target = self.plan_turn(kind, index)
            history = self.history(target)
            opening = None
            prefix = ""
            if kind == "continue":
                assert target is not None
                prefix = self.messages[target].text
                opening = Opening("assistant", prefix)
            elif kind == "impersonate":
                opening = Opening("user", "")
            built = self.builder.build(
                history, n_ctx=self.engine.n_ctx, reserve=self.reserve, state=self.window, opening=opening
            )
            self._save_window()
            gen = self.engine.generate(built.tokens or built.text, self.sampler, stop=built.stop)
            self.last_built = built
            return Turn(kind, target, built, gen, prefix)

    def finish(self, turn: Turn) -> Outcome:
        """Commit what the turn produced: a stopped reply keeps its partial text, marked as stopped."""
        stats = turn.generation.stats
        stopped = stats is None or stats.finish_reason == "cancelled"
        text = turn.generation.text
        self.last_stats = stats
        state = "stopped" if stopped else "done"
        if turn.kind == "impersonate":
            return Outcome(turn.kind, text.strip(), stopped, stats, None)
        provenance = self.provenance(turn, stats)
        with self.lock:
            if turn.kind == "continue":
                assert turn.target is not None
                m = self.messages[turn.target]
                if not text.strip():
                    return Outcome(turn.kind, m.text, stopped, stats, turn.target)
                old = m.swipes[m.active].provenance if m.swipes else {}
                merged = {**old, "continued": [*old.get("continued", []), provenance]}
                full = (turn.prefix + text).rstrip()
                self.store.update_swipe(m.id, full, state=state, provenance=merged)
                self.reload()
                return Outcome(turn.kind, full, stopped, stats, turn.target)
            reply = text.strip()
            if stopped and not reply:
                return Outcome(turn.kind, "", True, stats, None)  # stopped before a word: nothing to keep
            if turn.kind == "regenerate":
                assert turn.target is not None
                self.store.add_swipe(self.messages[turn.target].id, reply, state=state, provenance=provenance)
                index = turn.target
            else:
                self.store.add_message(self.chat_id, "assistant", reply, state=state, provenance=provenance)
                index = len(self.messages)
            self.reload()
            return Outcome(turn.kind, reply, stopped, stats, index)

    def run(self, kind: str = "reply", index: int | None = None) -> Outcome:
        """A whole turn on this thread (the plain chat, tests)."""
        turn = self.begin(kind, index)
        turn.generation.result()
        return self.finish(turn)

    def provenance(self, turn: Turn, stats: GenerationStats | None) -> dict[str, Any]:
        """Where a reply came from: enough to tell which model, format and settings made it."""
        engine = self.engine
        report = engine.report if engine is not None else None
        info = engine.info if engine is not None else None
        model: dict[str, Any] = {}
        if report is not None:
            model = {
                "path": str(report.path),
                "file": report.path.name,
                "sha256": self.store.cached_sha256(Path(report.path)),
                "size": info.file_size if info is not None else None,
                "quant": info.file_type if info is not None else None,
                "n_ctx": report.n_ctx,
                "gpu_layers": report.gpu_layers,
            }
        sampler = {k: v for k, v in dataclasses.asdict(self.sampler).items() if k not in ("extra", "grammar")}
        out: dict[str, Any] = {
            "kind": turn.kind,
            "model": model,
            "format": self.builder.format_name if self.builder is not None else None,
            "sampler": sampler,
            "time": time.time(),
        }
        if stats is not None:
            out.update(
                seed=stats.seed,
                prompt_tokens=stats.prompt_tokens,
                prompt_evaluated=stats.prompt_evaluated,
                prompt_reused=stats.prompt_reused,
                time_to_first_token=round(stats.time_to_first_token, 4),
                tokens_per_second=round(stats.decode_tokens_per_second, 2),
                generated_tokens=stats.generated_tokens,
                finish_reason=stats.finish_reason,
            )
        return out

    # -- the context, as the status bar shows it ---------------------------------------

    def preview(self) -> Preview | None:
        """The prompt the next reply would be built from now (without evaluating anything)."""
        with self.lock:
            if not self.ready:
                return None
            assert self.engine is not None and self.builder is not None
            history = self.history()
            state = WindowState(self.window.start, self.window.examples_dropped)
            built = self.builder.build(history, n_ctx=self.engine.n_ctx, reserve=self.reserve, state=state)
        tokens = built.tokens or []
        plan = self.engine.plan(tokens)
        pinned = built.pinned_tokens or 0
        return Preview(
            n_ctx=self.engine.n_ctx,
            pinned=pinned,
            history=len(tokens) - pinned,
            reserve=self.reserve,
            first_kept=built.kept[0] if built.kept else len(history),
            to_evaluate=plan.to_evaluate,
            reused=plan.reused,
        )


def hash_model(store: ChatStore, path: Path) -> str:
    """SHA-256 of the model, once per file version; replies made before it was known get it too."""
    digest = store.file_sha256(path)
    store.backfill_sha256(str(path), digest)
    return digest


def _recipe(ws: Workspace, card: Any, seed: int, overrides: dict[str, Any]) -> PromptRecipe:
    keys = ("system", "user", "char", "lorebooks", "lore_placement")
    return ws.recipe(card, chat_seed=seed, **{k: overrides.get(k) for k in keys})


def open_session(
    ws: Workspace, chat_id: int, *, sampler: SamplerSettings | None = None, **overrides: Any
) -> ChatSession:
    """Reopen a stored chat with its own character (raises a one-line error if the card is gone).

    `overrides`: system, user, char, lorebooks, lore_placement, as given on the command line.
    """
    info = ws.store.chat(chat_id)
    _, card = ws.resolve_character(info["card_ref"])
    if card is None and not overrides.get("char"):
        overrides = {**overrides, "char": info["card_name"]}  # an imported chat without a card: its name
    recipe = _recipe(ws, card, int(info["extra"].get("chat_seed", 0)), overrides)
    return ChatSession(ws.store, chat_id, recipe, sampler or ws.sampler())


def start_session(
    ws: Workspace, card_ref: str | None, *, greeting: int = 0, sampler: SamplerSettings | None = None, **overrides: Any
) -> ChatSession:
    """A new chat with a character (`None`: no character)."""
    ref, card = ws.resolve_character(card_ref)
    seed = new_chat_seed()
    recipe = _recipe(ws, card, seed, overrides)
    return ChatSession.create(
        ws.store, recipe, sampler or ws.sampler(), card_ref=ref, chat_seed=seed, greeting=greeting
    )
