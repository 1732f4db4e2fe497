"""`cattery chat --plain`: a line-based chat on stdin/stdout, for scripts and plain terminals.

A thin loop over the one chat core, `ChatSession` (app/session/chat.py), which the
full-screen app drives too: the history, the window, macros, greetings and the reply
reserve are the session's, and its turns are saved in the chat database as the app's
are. Like the app, `cattery chat --plain` continues the last chat (`--chat ID` another,
`--new` a new one).

stdout carries only the model's replies (and what a slash command was asked to
print), so a script can pipe lines in and read replies out; the banner, warnings
and notices go to stderr. Ctrl-C stops a reply and keeps the chat going.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from app.errors import CatteryError
from app.session.chat import ChatSession
from app.session.kv_keeper import KVKeeper, Restored
from app.session.thinking import thought_summary

HELP = """\
/help          this list
/system TEXT   set the system prompt (without TEXT: show it)
/reset         a new chat with this character (this one stays saved; the system prompt stays)
/stats         model, placement and the last reply's speed
/lore          the lorebook entries active in the last prompt, and the Author's Note
/greeting [N]  list the card's greetings, or open with greeting N instead
/thinking [on|off|keep|drop|budget N]  a thinking model: let it think or not, keep its reasoning in
               later prompts or not (the default), a token budget for it (0: none); saved with the chat
/quit          leave (Ctrl-D does too)
An empty line lets the character speak again. Ctrl-C stops a reply.
A line ending in \\ continues on the next line."""


@dataclass
class PlainChat:
    """The line chat's loop: reads lines, runs slash commands, streams each turn of `session`.

    `session` has a model attached (`ChatSession.attach`) before `run`."""

    session: ChatSession
    # `/reset`: a new chat in place of this one (session/chat.restart_session); the old one stays saved.
    restart: Callable[[], ChatSession]
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    interactive: bool = False
    format_note: str = ""
    keeper: KVKeeper | None = None  # keeps the chat's KV cache after each reply and at the end
    restored: Restored = field(default_factory=lambda: Restored())  # what opening the chat put back
    show_thinking: bool = True  # a thinking model's reasoning on stderr as it streams (off: only its length)
    _thinking_shown: bool = False  # reasoning was written to stderr and its line is not ended yet

    def greet(self, *, continued: bool = False) -> None:
        """The character speaks first: the greeting that opens the chat is shown (none: nothing).
        A chat continued from an earlier run says so, and shows its last message."""
        session = self.session
        msgs = session.messages
        where = self.stdout if self.interactive else self.stderr
        if continued:
            count = f"{len(msgs)} message" + ("" if len(msgs) == 1 else "s")
            if self.restored.tokens:
                count += f", {self.restored.tokens} tokens restored from its KV snapshot"
            self.note(f"(continuing chat {session.chat_id} “{session.title}”, {count}; --new starts a new one)")
            if msgs:
                print(msgs[-1].text, file=where, flush=True)
        elif msgs and msgs[0].role == "assistant":
            print(msgs[0].text, file=where, flush=True)

    def note(self, text: str) -> None:
        print(text, file=self.stderr, flush=True)

    def out(self, text: str) -> None:
        print(text, file=self.stdout, flush=True)

    # -- input ---------------------------------------------------------------------

    def _read_line(self) -> str | None:
        if self.interactive and self.stdin is sys.stdin:
            try:
                return input("> ")
            except EOFError:
                print(file=self.stdout)  # leave the shell's prompt on a line of its own
                return None
        line = self.stdin.readline()
        return line.rstrip("\r\n") if line else None

    def messages(self) -> Iterator[str]:
        """User inputs; a trailing backslash joins the next line."""
        while True:
            try:
                line = self._read_line()
            except KeyboardInterrupt:
                if not self.interactive:
                    raise
                self.note("\n(/quit or Ctrl-D to leave)")
                continue
            if line is None:
                return
            parts = []
            while line is not None and line.endswith("\\"):
                parts.append(line[:-1])
                line = self._read_line()
            parts.append(line or "")
            yield "\n".join(parts)

    # -- the loop ------------------------------------------------------------------

    def run(self) -> int:
        try:
            for text in self.messages():
                if text.startswith("/"):
                    if self.command(text) == "quit":
                        break
                    continue
                if not text.strip():
                    self.reply(None)  # the character speaks again, as Enter in the app's empty box does
                    continue
                self.reply(text)
        finally:
            self.keep()
        return 0

    def keep(self) -> None:
        """The chat's KV cache kept (the file is written on the keeper's own thread); a big save's
        size, or a state too big for the disk, said on stderr."""
        if self.keeper is not None:
            kept = self.keeper.keep(self.session)
            if kept is not None and kept.notice:
                self.note(kept.notice)

    def command(self, text: str) -> str | None:
        name, _, arg = text.partition(" ")
        name = name.lower()
        if name in ("/quit", "/exit", "/q"):
            return "quit"
        if name == "/help":
            self.out(HELP)
        elif name == "/system":
            self.system(arg.strip())
        elif name == "/reset":
            self.reset()
        elif name == "/greeting":
            self.choose_greeting(arg.strip())
        elif name == "/lore":
            self.out(self.lore_text())
        elif name == "/stats":
            self.out(self.stats_text())
        elif name == "/thinking":
            self.thinking(arg.split())
        else:
            self.note(f"unknown command {name}; /help lists them")
        return None

    def thinking(self, words: list[str]) -> None:
        """Show or change this chat's thinking choices (stored with the chat, as the app's switches)."""
        changes: dict[str, object] = {}
        match words:
            case []:
                pass
            case ["on"] | ["off"]:
                changes["enabled"] = words[0] == "on"
            case ["keep"] | ["drop"]:
                changes["keep"] = words[0] == "keep"
            case ["budget", n] if n.isascii() and n.isdigit():
                changes["budget"] = int(n)
            case _:
                self.note("usage: /thinking [on|off|keep|drop|budget N]")
                return
        try:
            prefs = self.session.set_thinking(**changes) if changes else self.session.thinking
        except CatteryError as exc:
            self.note(f"error: {exc}")
            return
        builder = self.session.builder
        markers = builder.reasoning if builder is not None else None
        model = (
            f"this format's reasoning block is {markers.start}…{markers.end}"
            if markers is not None
            else "this format has no reasoning block (a format file's reasoning_start/_end, or a template with <think>)"
        )
        budget = f"a budget of {prefs.budget} tokens" if prefs.budget else "no budget"
        if prefs.budget and self.session.sampler.grammar:
            budget += " (not applied while a grammar shapes the replies)"
        self.out(
            f"thinking {'on' if prefs.enabled else 'off'}, reasoning {'kept in' if prefs.keep else 'left out of'} "
            f"later prompts, {budget}; {model}"
        )

    def reset(self) -> None:
        """Forget the conversation: a new chat with the same character and greeting; the old one is kept."""
        old = self.session
        self.keep()
        try:
            self.session = self.restart()
        except CatteryError as exc:
            self.note(f"error: {exc}")
            return
        self.note("(conversation cleared)")
        if old.messages:
            self.note(f"(chat {old.chat_id} is kept: `cattery chat --chat {old.chat_id}` continues it)")

    def system(self, text: str) -> None:
        """Set the system prompt for the rest of this run (empty: show it)."""
        builder = self.session.builder
        assert builder is not None
        if text:
            with self.session.lock:
                builder.system = text
            self.note("(system prompt set)")
        else:
            self.out(builder.system or "(no system prompt)")

    def lore_text(self) -> str:
        """The entries the last prompt switched on and why, and where the Author's Note went."""
        from app.session.lore import ChatExtras

        builder = self.session.builder
        extras = builder.dynamic if builder is not None and isinstance(builder.dynamic, ChatExtras) else None
        active = extras.active if extras is not None else None
        if active is None:
            lines = ["no lorebook in this chat"]
        else:
            lines = [
                f"{a.book or 'lorebook'} #{a.entry.uid}" + (f" {a.entry.name}" if a.entry.name else "") + f": {a.why}"
                for a in active
            ] or ["no lore entries are active"]
        note = extras.note if extras is not None else None
        if note is not None and note.text.strip():
            built = self.session.last_built
            where = next((i for i in built.insertions if "author_note" in i.kinds), None) if built else None
            if where is not None:
                spot = "right before the reply" if where.before is None else f"before message {where.before + 1}"
                lines.append(f"{note.describe()}: in the last prompt, {spot}")
            else:
                lines.append(f"{note.describe()}: not in the last prompt")
        return "\n".join(lines)

    def choose_greeting(self, arg: str) -> None:
        """The card's alternate greetings are the first message's swipes: pick one before you write."""
        greetings = self.session.recipe.greetings
        if not greetings:
            self.note("this chat has no greeting")
            return
        if not arg:
            self.out("\n".join(f"{i + 1}. {g.splitlines()[0][:100]}" for i, g in enumerate(greetings)))
            return
        if not arg.isdigit() or not 1 <= int(arg) <= len(greetings):
            self.note(f"/greeting takes a number from 1 to {len(greetings)}")
            return
        if any(m.role == "user" for m in self.session.messages):
            self.note("the greeting can only be changed before your first message (/reset first)")
            return
        self.out(self.session.open_with_greeting(int(arg) - 1))

    def stats_text(self) -> str:
        session = self.session
        engine = session.engine
        assert engine is not None
        report = engine.report
        lines = []
        if report is not None:
            if getattr(report, "remote", False):
                lines.append(
                    f"model {report.model}: {report.placement}, ctx {report.n_ctx}, "
                    f"tokens counted by {report.tokenizer}, format: {self.format_note}"
                )
            else:
                lines.append(
                    f"model {report.path.name}: {report.placement}, ctx {report.n_ctx} "
                    f"(trained {report.n_ctx_train}), {report.threads} threads, format: {self.format_note}"
                )
        count = len(session.messages)
        lines.append(f"messages: {count} ({count - session.window.start} in the window)")
        built = session.last_built
        if built is not None and built.tokens is not None:
            lines.append(
                f"last prompt: {len(built.tokens)} tokens ({built.pinned_tokens} pinned) of a budget of "
                f"{built.budget}; {len(built.dropped)} messages have left the window"
            )
        stats = session.last_stats
        lines.append(f"last reply: {stats.summary()}" if stats else "last reply: none yet")
        if self.restored.tokens:
            r = self.restored
            lines.append(f"opened from its KV snapshot ({r.source}): {r.tokens} tokens not evaluated again")
        upcoming = session.preview() if session.messages else None
        if upcoming is not None:
            lines.append(
                f"next turn: your message plus {upcoming.to_evaluate} tokens to evaluate ({upcoming.reused} cached)"
            )
        return "\n".join(lines)

    def reply(self, text: str | None) -> None:
        """A reply to `text`; None: the character speaks again after its own message (an empty line)."""
        session = self.session
        added = None
        try:
            if text is not None:
                added = session.add_user(text)  # the card's macros expanded, as the app does
            turn = session.begin("reply" if text is not None else "speak")
        except CatteryError as exc:
            self._take_back(added)
            self.note(f"error: {exc}")
            return
        if turn.built.evicted_now:
            self.note(f"({len(turn.built.evicted_now)} older messages left the context window)")
        gen = turn.generation
        previous = signal.getsignal(signal.SIGINT)
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            signal.signal(signal.SIGINT, lambda *_: gen.cancel())
        try:
            for kind, text in turn.parts():
                self._write(kind, text)
        except CatteryError as exc:
            if gen.text.strip():  # a server that failed mid-reply: what came is kept, marked stopped
                self.stdout.write("\n")
                try:
                    session.finish(turn)
                except CatteryError as saving:
                    self.note(f"error: {saving}")
                self.note(f"error: {exc} (the reply so far is kept, marked stopped)")
                return
            self._take_back(added)
            self.note(f"\nerror: {exc}")
            return
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
        self.stdout.write("\n")
        self.stdout.flush()
        try:
            session.finish(turn)
        except CatteryError as exc:
            self.note(f"error: {exc}")
            return
        if gen.stats and gen.stats.finish_reason == "cancelled":
            self.note("(stopped)")
        self._thought(session)

    def _write(self, kind: str, text: str) -> None:
        """The answer to stdout; the reasoning to stderr, dimmed on a terminal, or not at all."""
        if kind == "answer":
            if self._thinking_shown:
                self.stderr.write("\n")
                self.stderr.flush()
                self._thinking_shown = False
            self.stdout.write(text)
            self.stdout.flush()
        elif self.show_thinking:
            self._thinking_shown = True
            self.stderr.write(f"\x1b[2m{text}\x1b[0m" if self._dim else text)
            self.stderr.flush()

    @property
    def _dim(self) -> bool:
        return self.interactive and self.stderr.isatty()

    def _thought(self, session: ChatSession) -> None:
        """After a reply that thought: how long, in one line on stderr."""
        if self._thinking_shown:
            self.stderr.write("\n")
            self._thinking_shown = False
        last = session.messages[-1] if session.messages else None
        facts = last.swipes[last.active].provenance.get("reasoning") if last is not None and last.swipes else None
        if not isinstance(facts, dict) or not last or not last.reasoning:
            return
        self.note(f"({thought_summary(facts)})")

    def _take_back(self, index: int | None) -> None:
        """A message that got no reply (the prompt could not be built, the model failed) is not kept."""
        if index is not None:
            try:
                self.session.delete(index)
            except CatteryError as exc:
                self.note(f"error: {exc}")
