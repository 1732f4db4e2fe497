"""A chat in progress: its stored messages, its character's prompt, the window, the model.

Every change goes to the chat store at once, and every turn (a reply, a regenerated
or continued reply, an impersonated user line) is a generation whose result is
committed the moment it ends, from the thread that consumed it. Nothing here knows
about the screen: the full-screen app calls these methods from its workers, the
line chat (app/plain_chat.py) from its loop, and each shows what they return.

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
from app.prompt.reasoning import ReasoningMarkers, ReasoningSplitter, split_reply, with_reasoning
from app.prompt.segments import Message
from app.prompt.window import WindowState
from app.session.thinking import BudgetedGeneration, ThinkingPrefs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from app.cards.lorebook import Activation
    from app.engine.engine import Generation
    from app.engine.interface import ChatEngine
    from app.engine.stats import GenerationStats
    from app.prompt.builder import PromptBuilder
    from app.session.authors_note import AuthorsNote
    from app.session.recipe import PromptRecipe
    from app.session.workspace import Workspace

TURN_KINDS = ("reply", "regenerate", "continue", "impersonate", "speak")


@dataclass
class Turn:
    """One generation for this chat and where its text goes when it ends."""

    kind: str  # reply, regenerate, continue, impersonate, speak (the character again, after itself)
    target: int | None  # index of the message it writes into (regenerate, continue)
    built: BuiltPrompt
    generation: Generation
    prefix: str = ""  # text the reply already had (continue), or the user's line begun (impersonate)
    started: float = field(default_factory=time.time)
    context: Preview | None = None  # the context this turn uses: what the status bar shows while it runs
    restored: SnapshotUse | None = None  # the chat's KV snapshot this turn started from
    # A thinking model's turn: the markers its text is split at (None: all of it is the answer),
    # whether it starts inside the block, and the reasoning a continued reply had already.
    markers: ReasoningMarkers | None = None
    inside: bool = False
    reasoning_before: str = ""

    def cancel(self) -> None:
        self.generation.cancel()

    def parts(self) -> Iterator[tuple[str, str]]:
        """The reply as it streams, told apart: ("reasoning" | "answer", text), in order. What the app and
        the line chat show; `finish` splits the whole text the same way when it stores it."""
        if self.markers is None:
            for piece in self.generation:
                yield "answer", piece
            return
        splitter = ReasoningSplitter(self.markers, inside=self.inside)
        for piece in self.generation:
            yield from splitter.feed(piece)
        yield from splitter.end()


@dataclass(frozen=True)
class SnapshotUse:
    """A chat's kept KV cache put back when it opened: where from ("memory" or "disk") and
    how many tokens it holds. The first turn after it says so (status bar, reply details)."""

    source: str
    tokens: int


@dataclass
class Outcome:
    """What a finished turn left: the text, where it was saved, and its statistics."""

    kind: str
    text: str
    stopped: bool
    stats: GenerationStats | None
    index: int | None  # the message written (None: nothing saved, e.g. impersonation)
    reasoning: str = ""  # a thinking model's reasoning, apart from the text


@dataclass
class LoreState:
    """World Info for the next reply, as the app shows it."""

    active: list[Activation]
    note_due: bool | None  # None: no lorebook and no note
    note_in: int | None  # user turns until the note goes in (0: the next reply); None: never


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
    # Of `reused`, tokens put back from the chat's KV snapshot when it opened (0: none, or
    # they were used by a turn already).
    restored: int = field(default=0, kw_only=True)
    # Why the chat as it is cannot be sent (a stored message longer than the context); the
    # numbers then are the pinned block and a full window, so the meter still shows.
    problem: str = field(default="", kw_only=True)

    @property
    def used(self) -> int:
        return self.pinned + self.history

    @property
    def free(self) -> int:
        return max(0, self.n_ctx - self.used)


@dataclass(frozen=True)
class MessageFit:
    """A message about to be sent against the room the context has for it (checked before sending)."""

    tokens: int  # the message as the prompt format renders it
    room: int  # the most one message can take: the context less the pinned block, the reply prompt and its reserve
    n_ctx: int

    @property
    def fits(self) -> bool:
        return self.tokens <= self.room


def speak_again_history(builder: PromptBuilder, history: list[Message]) -> list[Message]:
    """The history to prompt with when the character speaks again, right after its own message.

    Formats that open each turn with a marker of its own (ChatML, Llama 3, Metharme, Alpaca,
    Vicuna, Pygmalion…) render two turns of the character in a row as they are, and the
    prompt ends with the character's turn opened again. Formats whose reply prompt is empty
    (Llama 2, Mistral: the user's ` [/INST]` is what opens the reply) would end the prompt
    inside a new user instruction, and the model would write the user's next line; a chat
    template may refuse two assistant messages in a row outright. Both get an empty user
    turn between (`[INST]  [/INST]`), never stored, as SillyTavern's instruct mode does.
    """
    from app.prompt.chat_template import TemplateRenderError, TemplateUnsafeError

    if not history or history[-1].role != "assistant":
        return history
    fmt = builder.fmt
    if fmt is not None:
        opens_a_turn = bool(fmt.generation.strip())
    else:
        try:
            builder.render([*history, Message("assistant", "…")])  # the turn to come, after its own
            opens_a_turn = True
        except TemplateUnsafeError:
            raise
        except TemplateRenderError:
            opens_a_turn = False  # e.g. "roles must alternate user/assistant/user/assistant"
    return history if opens_a_turn else [*history, Message("user", "")]


def reply_reserve(max_tokens: int, n_ctx: int | None) -> int:
    """The tokens a prompt leaves free for the reply: as many as the reply may take, but never more
    than half the context, or a large `max_tokens` would leave no room for the conversation. With no
    context known (`cattery prompt` without a model), all of `max_tokens`."""
    return min(max_tokens, n_ctx // 2) if n_ctx else max_tokens


def new_chat_seed() -> int:
    """The seed that keeps `{{pick}}` and the pinned block's macros the same for the whole chat."""
    return secrets.randbelow(2**31)


class ChatSession:
    def __init__(self, store: ChatStore, chat_id: int, recipe: PromptRecipe, sampler: SamplerSettings) -> None:
        info = store.chat(chat_id)
        self.store = store
        self.chat_id = chat_id
        self.title: str = info["title"]
        self.title_auto: bool = info["title_auto"]  # Cattery's title, following the first exchange
        # Told when the automatic title changes (the app redraws its header and list); may be
        # called from the thread that finished a turn, so it must only post, never wait.
        self.on_title: Callable[[], None] | None = None
        self.card_ref: str | None = info["card_ref"]
        self.extra: dict[str, Any] = info["extra"]
        self.recipe = recipe
        self.sampler = sampler
        self.lock = threading.RLock()
        self.messages: list[StoredMessage] = store.messages(chat_id)
        self.window = WindowState()
        self.engine: ChatEngine | None = None
        self.builder: PromptBuilder | None = None
        self.format_choice: FormatChoice | None = None
        self.last_built: BuiltPrompt | None = None
        self.last_stats: GenerationStats | None = None
        self.restored: SnapshotUse | None = None  # a KV snapshot put back, until a turn starts from it
        self.thinking_default = ThinkingPrefs()  # the settings' (open_session), under the chat's own choices

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
            title or time.strftime("%Y-%m-%d %H:%M"),  # until the first exchange names it; the character is beside it
            card_ref,
            char,
            recipe.user,
            extra={"chat_seed": chat_seed},
            auto_title=title is None,
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

    def attach(self, engine: ChatEngine, choice: FormatChoice) -> None:
        """Use a loaded model: the prompt is built for its tokenizer and format from now on."""
        from app.prompt.tokens import tokenizer_from

        builder = self.recipe.builder(choice.name, engine.info, tokenizer_from(engine))
        with self.lock:
            self.engine, self.builder, self.format_choice = engine, builder, choice
            report = engine.report
            self.window = self.saved_window(report.path if report is not None else None, engine.n_ctx)

    def saved_window(self, model: Path | None, n_ctx: int | None) -> WindowState:
        """Where this chat's window stood on this model at this context (`cattery prompt --chat` asks too).

        The window only moves forward; on another model or context it starts over."""
        saved = self.extra.get("window") or {}
        if model is None or saved.get("model") != str(model) or saved.get("n_ctx") != n_ctx:
            return WindowState()
        return WindowState(int(saved.get("start", 0)), bool(saved.get("examples_dropped")))

    def detach(self) -> None:
        with self.lock:
            self.engine = self.builder = self.format_choice = None

    def use_recipe(self, recipe: PromptRecipe) -> None:
        """A new recipe for this chat (lorebooks attached or detached, a new Author's Note): the next
        prompt is built from it; a reply being written keeps the prompt it started with."""
        from app.prompt.tokens import tokenizer_from

        with self.lock:
            self.recipe = recipe
            if self.engine is not None and self.format_choice is not None and self.engine.loaded:
                self.builder = recipe.builder(self.format_choice.name, self.engine.info, tokenizer_from(self.engine))

    # -- the Author's Note and World Info ----------------------------------------------

    @property
    def note(self) -> AuthorsNote | None:
        return self.recipe.note

    def set_note(self, note: AuthorsNote | None) -> None:
        """Save the chat's Author's Note (None: none) and use it from the next prompt on."""
        value = note.to_dict() if note is not None and note.text.strip() else None
        self.store.update_chat_extra(self.chat_id, author_note=value)
        self.extra["author_note"] = value
        self.use_recipe(dataclasses.replace(self.recipe, note=note if value is not None else None))

    def lore_now(self) -> LoreState:
        """The entries the next reply switches on and why, and whether the Author's Note goes in:
        from the messages as they are (no model needed; a book's token budget counts with the
        model's tokenizer once one is loaded)."""
        from app.prompt.tokens import tokenizer_from

        with self.lock:
            history = self.history()
            tokenizer = tokenizer_from(self.engine) if self.engine is not None and self.engine.loaded else None
            extras = self.recipe.extras(tokenizer)
            if extras is None:
                return LoreState([], None, None)
            extras(history)
            note = self.recipe.note
            return LoreState(list(extras.active or []), extras.note_due, note.turns_until(history) if note else None)

    @property
    def ready(self) -> bool:
        return self.builder is not None and self.engine is not None and self.engine.loaded

    # -- reading -----------------------------------------------------------------------

    def reload(self) -> None:
        self.messages = self.store.messages(self.chat_id)
        self._retitle()

    def _retitle(self) -> None:
        """While the title is Cattery's, it follows the first exchange (app/chats/titles.py).

        Every change to the messages passes through `reload`, so the first user message
        names the chat the moment it is saved, and an edit of it renames the chat too.
        """
        if not self.title_auto:
            return
        from app.chats.titles import title_from

        title = title_from((m.role, m.text, _written_by_model(m)) for m in self.messages)
        if title is None or title == self.title:
            return
        before = self.title
        try:
            if self.store.set_auto_title(self.chat_id, title):
                self.title = title
            else:  # renamed meanwhile (`cattery chats rename`): the person's title stays
                self.refresh_title()
        except CatteryError:  # busy or full: the message is saved, the title is tried at the next change
            return
        if self.title != before and self.on_title is not None:
            self.on_title()

    def refresh_title(self) -> bool:
        """Read the title again (renamed by `cattery chats rename` beside the app); whether it changed."""
        info = self.store.chat(self.chat_id)
        changed = (info["title"], info["title_auto"]) != (self.title, self.title_auto)
        self.title, self.title_auto = info["title"], info["title_auto"]
        return changed

    def history(self, upto: int | None = None, *, builder: PromptBuilder | None = None) -> list[Message]:
        """The messages as later prompts carry them: a reply's reasoning only if the chat keeps it
        (written with the markers of `builder`'s format, the session's own by default)."""
        builder = builder or self.builder
        markers = builder.reasoning if builder is not None and self.thinking.keep else None
        if markers is None:
            return [Message(m.role, m.text, m.name) for m in self.messages[:upto]]
        return [
            Message(m.role, with_reasoning(markers, m.reasoning, m.text) if m.role == "assistant" else m.text, m.name)
            for m in self.messages[:upto]
        ]

    @property
    def thinking(self) -> ThinkingPrefs:
        """What this chat does with a thinking model: its own choices over the settings'."""
        return ThinkingPrefs.from_mapping(self.extra.get("thinking"), self.thinking_default)

    def set_thinking(self, **changes: Any) -> ThinkingPrefs:
        """Change this chat's thinking choices (keep, enabled, budget); stored with the chat."""
        mine = dict(self.extra.get("thinking") or {}) if isinstance(self.extra.get("thinking"), dict) else {}
        mine.update(changes)
        checked = ThinkingPrefs.from_mapping(mine)
        stored = {k: getattr(checked, k) for k in mine if k in ("keep", "enabled", "budget")}
        self.store.update_chat_extra(self.chat_id, thinking=stored)
        self.extra["thinking"] = stored
        return self.thinking

    @property
    def reserve(self) -> int:
        return reply_reserve(self.sampler.max_tokens, self.engine.n_ctx if self.engine is not None else None)

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

    def open_with_greeting(self, number: int) -> str:
        """Open the chat with the card's greeting `number` (0: its first message) and nothing after it;
        the greeting's text. The greetings are the first message's alternatives (`create`), so this is
        for a chat the user has not written in yet: the caller checks."""
        with self.lock:
            if len(self.messages) > 1:
                self.store.delete_message(self.messages[1].id, and_after=True)
            self.store.select_swipe(self.messages[0].id, number)
            self.window = WindowState()  # a new opening: the window starts over with it
            self._save_window()
            self.reload()
            return self.messages[0].text

    def delete_alternative(self, index: int) -> tuple[int, int]:
        """Delete the alternative shown of a message, not the message: (the one shown now, how many are left).

        Its only alternative is not deleted this way (one line says so): `delete` takes the message.
        """
        with self.lock:
            m = self.messages[index]
            shown = self.store.delete_swipe(m.id, m.active)
            self.reload()
            return shown, len(self.messages[index].swipes)

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
        self.title = self.store.rename_chat(self.chat_id, title)
        self.title_auto = False

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
        if kind == "speak":  # after the user's message, or in an empty chat, it is a plain reply
            return ("speak" if last >= 0 and msgs[last].role == "assistant" else "reply"), None
        if last < 0 or msgs[last].role != "assistant":
            return "reply", None
        if index is not None and index != last:
            raise CatteryError("only the last message can be regenerated or continued")
        if kind == "regenerate" and not any(m.role == "user" for m in msgs[:last]):
            raise CatteryError("a greeting is not regenerated: swipe through the card's greetings instead")
        return kind, last

    def begin(self, kind: str, index: int | None = None, *, prefix: str = "") -> Turn:
        """Build the prompt and start generating. Blocks only for the prompt build.

        `prefix`: for impersonate, the start of the user's line already typed; the model
        goes on from it, so what the person wrote is never replaced.
        """
        with self.lock:
            if not self.ready:
                raise CatteryError("no model is loaded yet")
            assert self.engine is not None and self.builder is not None
            kind, target = self.plan_turn(kind, index)
            history = self.history(target)
            opening = None
            prefs = self._sync_thinking()
            markers = self.builder.reasoning if kind != "impersonate" else None
            inside, before = bool(markers and markers.opened), ""
            if kind == "continue":
                assert target is not None
                m = self.messages[target]
                if markers is not None and _cut_while_thinking(m):
                    # Stopped while thinking: the reply goes on thinking from where it stopped.
                    before, prefix, inside = m.reasoning, "", True
                    opening = Opening("assistant", f"{markers.start}\n{m.reasoning}")
                else:
                    markers = None  # what follows an answer is more answer
                    prefix = m.text
                    opening = Opening("assistant", prefix)
            elif kind == "impersonate":
                opening = Opening("user", prefix)
            else:
                prefix = ""
                opening = _skip_opening(markers, prefs)
                if markers is not None and not prefs.enabled and (markers.switch or markers.skip):
                    markers = None  # it answers at once: all of the reply is the answer
            if kind == "speak":
                history = speak_again_history(self.builder, history)
            built = self.builder.build(
                history, n_ctx=self.engine.n_ctx, reserve=self.reserve, state=self.window, opening=opening
            )
            self._save_window()
            tokens = built.tokens or []
            context = self._context(built, self.engine.plan(tokens), len(history))  # before the engine is busy
            gen: Any
            # A grammar shapes the whole reply: a second part would start it again, so it keeps no budget.
            if markers is not None and prefs.budget > 0 and not self.sampler.grammar:
                gen = BudgetedGeneration(
                    self.engine, built.tokens, built.text, self.sampler, built.stop, markers, prefs.budget,
                    inside=inside, owner=self.chat_id,
                )  # fmt: skip
            else:
                gen = self.engine.generate(
                    built.tokens or built.text, self.sampler, stop=built.stop, owner=self.chat_id, text=built.text
                )
            self.last_built = built
            restored, self.restored = self.restored, None
            return Turn(
                kind, target, built, gen, prefix, context=context, restored=restored,
                markers=markers, inside=inside, reasoning_before=before,
            )  # fmt: skip

    def finish(self, turn: Turn) -> Outcome:
        """Commit what the turn produced: a stopped reply keeps its partial text, marked as stopped."""
        stats = turn.generation.stats
        stopped = stats is None or stats.finish_reason == "cancelled"
        text = turn.generation.text
        self.last_stats = stats
        state = "stopped" if stopped else "done"
        if turn.kind == "impersonate":
            return Outcome(turn.kind, (turn.prefix + text).strip(), stopped, stats, None)
        split = split_reply(text, turn.markers, inside=turn.inside)
        text = split.answer
        reasoning = (turn.reasoning_before + split.raw_reasoning).strip() if turn.markers else ""
        provenance = self.provenance(turn, stats)
        if reasoning:
            provenance["reasoning"] = self._reasoning_facts(reasoning, split.closed, stats, turn.generation)
        with self.lock:
            if turn.kind == "continue":
                assert turn.target is not None
                m = self.messages[turn.target]
                if not text.strip() and reasoning == m.reasoning:
                    return Outcome(turn.kind, m.text, stopped, stats, turn.target, m.reasoning)
                old = m.swipes[m.active].provenance if m.swipes else {}
                merged = {**old, "continued": [*old.get("continued", []), provenance]}
                if turn.markers is not None:
                    merged["reasoning"] = provenance.get("reasoning")
                full = (turn.prefix + text).rstrip()
                self.store.update_swipe(
                    m.id, full, state=state, provenance=merged, reasoning=reasoning if turn.markers else None
                )
                self.reload()
                return Outcome(turn.kind, full, stopped, stats, turn.target, self.messages[turn.target].reasoning)
            reply = text.strip()
            if stopped and not reply and not reasoning:
                return Outcome(turn.kind, "", True, stats, None)  # stopped before a word: nothing to keep
            if turn.kind == "regenerate":
                assert turn.target is not None
                self.store.add_swipe(
                    self.messages[turn.target].id, reply, state=state, provenance=provenance, reasoning=reasoning
                )
                index = turn.target
            else:
                self.store.add_message(
                    self.chat_id, "assistant", reply, state=state, provenance=provenance, reasoning=reasoning
                )
                index = len(self.messages)
            self.reload()
            return Outcome(turn.kind, reply, stopped, stats, index, reasoning)

    def _reasoning_facts(self, reasoning: str, closed: bool, stats: GenerationStats | None, gen: Any) -> dict[str, Any]:
        """What the reply details say of its thinking: how long, and whether it was cut or closed for it."""
        tokens = 0
        if self.engine is not None and self.engine.loaded:
            try:
                tokens = len(self.engine.segment_tokenize(reasoning))
            except CatteryError:  # a server that no longer answers: the count is left out
                tokens = 0
        seconds = None
        if stats is not None and stats.generated_tokens:
            share = min(1.0, tokens / stats.generated_tokens)
            seconds = round(stats.time_to_first_token + stats.decode_seconds * share, 2)
        return {
            "tokens": tokens,
            "seconds": seconds,
            "open": not closed,
            "budget_closed": bool(getattr(gen, "closed_for_model", False)),
        }

    def run(self, kind: str = "reply", index: int | None = None) -> Outcome:
        """A whole turn on this thread, without streaming (tests, scripts)."""
        turn = self.begin(kind, index)
        turn.generation.result()
        return self.finish(turn)

    def provenance(self, turn: Turn, stats: GenerationStats | None) -> dict[str, Any]:
        """Where a reply came from: enough to tell which model, format and settings made it."""
        engine = self.engine
        report = engine.report if engine is not None else None
        info = engine.info if engine is not None else None
        model: dict[str, Any] = {}
        if report is not None and getattr(report, "remote", False):
            model = report.as_provenance()  # the engine URL, the server's model id and build
        elif report is not None:
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
            if turn.restored is not None:
                # What the snapshot spared this turn: the tokens it reused that the snapshot held.
                saved = min(stats.prompt_reused, turn.restored.tokens)
                out["kv_snapshot"] = {"source": turn.restored.source, "tokens": saved}
        return out

    # -- the context, as the status bar shows it ---------------------------------------

    def preview(self) -> Preview | None:
        """The prompt the next reply would be built from now (without evaluating anything).

        A chat whose newest message is longer than the context (imported, or edited so) still
        gets its numbers, with the problem named: the meter stays, nothing is toasted.
        """
        from app.errors import ContextOverflowError

        with self.lock:
            if not self.ready:
                return None
            assert self.engine is not None and self.builder is not None
            history = self.history()
            try:
                built = self._next_built(history)
            except ContextOverflowError:
                pinned = self.builder.build([]).pinned_tokens or 0
                n_ctx = self.engine.n_ctx
                problem = "the last message is longer than the context"
                return Preview(
                    n_ctx, pinned, n_ctx - pinned, self.reserve, max(0, len(history) - 1), 0, 0, problem=problem
                )
        return self._context(built, self.engine.plan(built.tokens or []), len(history))

    def _sync_thinking(self) -> ThinkingPrefs:
        """The chat's thinking choices, with a template's own switch (`enable_thinking`) set to match:
        every prompt of this chat, a turn's or a count's, renders the template the same way."""
        prefs = self.thinking
        builder = self.builder
        markers = builder.reasoning if builder is not None else None
        if builder is not None and markers is not None and markers.switch:
            if prefs.enabled:
                builder.variables.pop(markers.switch, None)
            else:
                builder.variables[markers.switch] = False
        return prefs

    def _next_built(self, history: list[Message]) -> BuiltPrompt:
        """The prompt of the next reply as the chat is now, the window left as it is saved."""
        assert self.engine is not None and self.builder is not None
        opening = _skip_opening(self.builder.reasoning, self._sync_thinking())
        state = WindowState(self.window.start, self.window.examples_dropped)
        return self.builder.build(history, n_ctx=self.engine.n_ctx, reserve=self.reserve, state=state, opening=opening)

    def next_prompt(self) -> list[int] | None:
        """The tokens the next turn's prompt starts with: the pinned block and the window as they
        are now. What a kept KV state is worth holding (`KVKeeper`); None without a model, or when
        the chat as it is cannot be sent (its last message is longer than the context)."""
        from app.errors import ContextOverflowError

        with self.lock:
            if not self.ready:
                return None
            try:
                return list(self._next_built(self.history()).tokens or [])
            except ContextOverflowError:
                return None

    def _context(self, built: BuiltPrompt, plan: Any, n_messages: int) -> Preview:
        assert self.engine is not None
        tokens = built.tokens or []
        pinned = built.pinned_tokens or 0
        restored = self.restored
        return Preview(
            n_ctx=self.engine.n_ctx,
            pinned=pinned,
            history=len(tokens) - pinned,
            reserve=self.reserve,
            first_kept=built.kept[0] if built.kept else n_messages,
            to_evaluate=plan.to_evaluate,
            reused=plan.reused,
            restored=min(plan.reused, restored.tokens) if restored is not None else 0,
        )

    def measure(self, text: str) -> MessageFit | None:
        """How many tokens `text` takes as the user's next message, and how many one message may
        take in this context; None without a model (nothing to count with).

        Everything else in the history can leave the window, so the room is the budget less
        what always stays: the pinned block, the reply prompt (and examples when pinned).
        """
        from app.cards.macros import expand

        if self.recipe.card is not None:
            text = expand(text, self.recipe.card.context)
        with self.lock:
            if not self.ready:
                return None
            assert self.engine is not None and self.builder is not None
            builder = self.builder

            def size(history: list[Message]) -> int:
                built = builder.build(history)  # no window: every token counted
                dropped = [] if builder.pin_examples else [s for s in built.segments if s.kind == "example"]
                return len(built.tokens or []) - sum(len(s.tokens) for s in dropped)

            base = size([])
            tokens = size([Message("user", text)]) - base
            n_ctx = self.engine.n_ctx
        return MessageFit(tokens, n_ctx - self.reserve - base, n_ctx)


def _skip_opening(markers: ReasoningMarkers | None, prefs: ThinkingPrefs) -> Opening | None:
    """A reply that skips thinking by the format's empty block after the generation prompt; None when
    thinking is on, when the template's own switch does it (`_sync_thinking`), or there is no way."""
    if markers is None or prefs.enabled or markers.switch or not markers.skip:
        return None
    return Opening("assistant", after=markers.skip)


def _cut_while_thinking(m: StoredMessage) -> bool:
    """A reply that stopped inside its reasoning block (no answer yet): a continue resumes thinking."""
    if not m.reasoning or m.text.strip() or not m.swipes:
        return False
    facts = m.swipes[m.active].provenance.get("reasoning")
    return isinstance(facts, dict) and facts.get("open") is True


def _written_by_model(m: StoredMessage) -> bool:
    """A reply the model wrote (its provenance names the turn), not a card's greeting or an import."""
    return bool(m.swipes) and "kind" in m.swipes[m.active].provenance


def hash_model(store: ChatStore, path: Path) -> str:
    """SHA-256 of the model, once per file version; replies made before it was known get it too."""
    digest = store.file_sha256(path)
    store.backfill_sha256(str(path), digest)
    return digest


def _recipe(
    ws: Workspace,
    card: Any,
    seed: int,
    overrides: dict[str, Any],
    *,
    card_ref: str | None = None,
    chat_id: int | None = None,
    note: AuthorsNote | None = None,
) -> PromptRecipe:
    keys = ("system", "user", "char", "lorebooks", "lore_placement")
    args = {k: overrides.get(k) for k in keys}
    return ws.recipe(card, chat_seed=seed, card_ref=card_ref, chat_id=chat_id, note=note, **args)


def _chat_note(saved: Any, options: dict[str, Any] | None) -> tuple[AuthorsNote | None, bool]:
    """(the chat's Author's Note, whether the command line changed it)."""
    from app.session.authors_note import AuthorsNote, note_from_options

    base = AuthorsNote.from_dict(saved)
    if not options:
        return base, False
    note = note_from_options(base, **options)
    return note, note != base


def fresh_recipe(ws: Workspace, session: ChatSession, **overrides: Any) -> PromptRecipe:
    """The chat's recipe as its card, books and settings are now, without using it yet: reading it
    needs no model, while `use_recipe` waits for the model's tokenizer (busy during a reply)."""
    info = ws.store.chat(session.chat_id)
    _, card = ws.resolve_character(info["card_ref"])
    if card is None and not overrides.get("char"):
        overrides = {**overrides, "char": info["card_name"]}
    return _recipe(
        ws,
        card,
        session.chat_seed,
        overrides,
        card_ref=info["card_ref"],
        chat_id=session.chat_id,
        note=session.recipe.note,
    )


def chat_to_open(
    ws: Workspace, *, chat: int | None = None, by_card: bool = False, card_ref: str | None = None, new: bool = False
) -> int | None:
    """The stored chat a start continues, the same for the app and the line chat: the one asked for
    (`--chat`); none with `--new`; with a character given (`--card`, `by_card`; None for "none"),
    its last chat; else the last chat used. None: start a new one. A last chat that is gone
    (deleted elsewhere) is not an error."""
    store = ws.store
    if chat is not None:
        return chat
    if new:
        return None
    if by_card:
        return store.latest_chat(card_ref)
    last = store.get_state("last_chat")
    return int(last) if last and last.isascii() and last.isdigit() and store.has_chat(int(last)) else None


def thinking_settings(ws: Workspace) -> ThinkingPrefs:
    """The settings' thinking choices (`[chat] thinking`, `keep_reasoning`, `thinking_budget`)."""
    c = ws.settings.chat
    return ThinkingPrefs(keep=c.keep_reasoning, enabled=c.thinking, budget=c.thinking_budget)


def open_session(
    ws: Workspace, chat_id: int, *, sampler: SamplerSettings | None = None, **overrides: Any
) -> ChatSession:
    """Reopen a stored chat with its own character (raises a one-line error if the card is gone).

    `overrides`: system, user, char, lorebooks, lore_placement, as given on the command line, and
    `note`: the Author's Note options given there (text, depth, every, role), saved with the chat.
    """
    info = ws.store.chat(chat_id)
    _, card = ws.resolve_character(info["card_ref"])
    if card is None and not overrides.get("char"):
        overrides = {**overrides, "char": info["card_name"]}  # an imported chat without a card: its name
    note, changed = _chat_note(info["extra"].get("author_note"), overrides.get("note"))
    seed = int(info["extra"].get("chat_seed", 0))
    recipe = _recipe(ws, card, seed, overrides, card_ref=info["card_ref"], chat_id=chat_id, note=note)
    session = ChatSession(ws.store, chat_id, recipe, sampler or ws.sampler())
    session.thinking_default = thinking_settings(ws)
    if changed:
        session.set_note(note)
    return session


def start_session(
    ws: Workspace,
    card_ref: str | None,
    *,
    greeting: int = 0,
    sampler: SamplerSettings | None = None,
    store: ChatStore | None = None,
    **overrides: Any,
) -> ChatSession:
    """A new chat with a character (`None`: no character), in the workspace's store unless given another."""
    ref, card = ws.resolve_character(card_ref)
    seed = new_chat_seed()
    note, _ = _chat_note(None, overrides.get("note"))
    recipe = _recipe(ws, card, seed, overrides, card_ref=ref, note=note)
    session = ChatSession.create(
        store or ws.store, recipe, sampler or ws.sampler(), card_ref=ref, chat_seed=seed, greeting=greeting
    )
    session.thinking_default = thinking_settings(ws)
    if note is not None:
        session.set_note(note)
    return session


def restart_session(ws: Workspace, session: ChatSession, **overrides: Any) -> ChatSession:
    """A new chat in place of `session` (the line chat's `/reset`): the same character, opening
    with the greeting shown, in the same store; the old chat stays as it was. It runs on the same
    model and format, with this run's system prompt (`/system`) and its last prompt and reply
    figures (what `/stats` shows of the model's work)."""
    first = session.messages[0] if session.messages else None
    greeting = first.active if first is not None and first.role == "assistant" else 0
    new = start_session(
        ws, session.card_ref, greeting=greeting, sampler=session.sampler, store=session.store, **overrides
    )
    if session.engine is not None and session.format_choice is not None:
        new.attach(session.engine, session.format_choice)
        if session.builder is not None and new.builder is not None:
            new.builder.system = session.builder.system
    new.last_built, new.last_stats = session.last_built, session.last_stats
    new.thinking_default = session.thinking_default  # this run's --no-thinking and the like go on
    return new
