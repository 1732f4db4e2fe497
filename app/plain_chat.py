"""`cattery chat --plain`: a line-based chat on stdin/stdout, for scripts and plain terminals.

stdout carries only the model's replies (and what a slash command was asked to
print), so a script can pipe lines in and read replies out; the banner, warnings
and notices go to stderr. Ctrl-C stops a reply and keeps the chat going.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

from app.cards.macros import MacroContext, expand
from app.engine.engine import Engine, Generation
from app.engine.options import SamplerSettings
from app.engine.stats import GenerationStats
from app.errors import CatteryError
from app.prompt.builder import BuiltPrompt, PromptBuilder
from app.prompt.segments import Message
from app.prompt.window import WindowState

HELP = """\
/help          this list
/system TEXT   set the system prompt (without TEXT: show it)
/reset         forget the conversation (the system prompt stays)
/stats         model, placement and the last reply's speed
/lore          the lorebook entries active in the last prompt, and the Author's Note
/greeting [N]  list the card's greetings, or open with greeting N instead
/quit          leave (Ctrl-D does too)
An empty line lets the character speak again. Ctrl-C stops a reply.
A line ending in \\ continues on the next line."""


@dataclass
class PlainChat:
    engine: Engine
    builder: PromptBuilder
    sampler: SamplerSettings
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    interactive: bool = False
    format_note: str = ""
    last_stats: GenerationStats | None = None
    last_prompt: BuiltPrompt | None = None
    history: list[Message] = field(default_factory=list)
    window: WindowState = field(default_factory=WindowState)
    macros: MacroContext | None = None  # a card's macros, expanded in what the user types
    greetings: list[str] = field(default_factory=list)  # the card's first message and its alternatives
    _current: Generation | None = None

    def greet(self, greeting: str) -> None:
        """The character speaks first: the greeting opens the conversation."""
        if not self.greetings:
            self.greetings = [greeting]
        self.history.append(Message("assistant", greeting))
        print(greeting, file=self.stdout if self.interactive else self.stderr, flush=True)

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
        for text in self.messages():
            if text.startswith("/"):
                if self.command(text) == "quit":
                    break
                continue
            if not text.strip():
                self.reply(None)  # the character speaks again, as Enter in the app's empty box does
                continue
            self.reply(text)
        return 0

    def command(self, text: str) -> str | None:
        name, _, arg = text.partition(" ")
        name = name.lower()
        if name in ("/quit", "/exit", "/q"):
            return "quit"
        if name == "/help":
            self.out(HELP)
        elif name == "/system":
            if arg.strip():
                self.builder.system = arg.strip()
                self.note("(system prompt set)")
            else:
                self.out(self.builder.system or "(no system prompt)")
        elif name == "/reset":
            greeting = self.history[:1] if self.history and self.history[0].role == "assistant" else []
            self.history[:] = greeting
            self.window = WindowState()
            self.note("(conversation cleared)")
        elif name == "/greeting":
            self.choose_greeting(arg.strip())
        elif name == "/lore":
            self.out(self.lore_text())
        elif name == "/stats":
            self.out(self.stats_text())
        else:
            self.note(f"unknown command {name}; /help lists them")
        return None

    def lore_text(self) -> str:
        """The entries the last prompt switched on and why, and where the Author's Note went."""
        dynamic = self.builder.dynamic
        active = getattr(dynamic, "active", None)
        if active is None:
            lines = ["no lorebook in this chat"]
        else:
            lines = [
                f"{a.book or 'lorebook'} #{a.entry.uid}" + (f" {a.entry.name}" if a.entry.name else "") + f": {a.why}"
                for a in active
            ] or ["no lore entries are active"]
        note = getattr(dynamic, "note", None)
        if note is not None and note.text.strip():
            built = self.last_prompt
            where = next((i for i in built.insertions if "author_note" in i.kinds), None) if built else None
            if where is not None:
                spot = "right before the reply" if where.before is None else f"before message {where.before + 1}"
                lines.append(f"{note.describe()}: in the last prompt, {spot}")
            else:
                lines.append(f"{note.describe()}: not in the last prompt")
        return "\n".join(lines)

    def choose_greeting(self, arg: str) -> None:
        """The card's alternate greetings are the first message's swipes: pick one before you write."""
        if not self.greetings:
            self.note("this chat has no greeting")
            return
        if not arg:
            self.out("\n".join(f"{i + 1}. {g.splitlines()[0][:100]}" for i, g in enumerate(self.greetings)))
            return
        if not arg.isdigit() or not 1 <= int(arg) <= len(self.greetings):
            self.note(f"/greeting takes a number from 1 to {len(self.greetings)}")
            return
        if any(m.role == "user" for m in self.history):
            self.note("the greeting can only be changed before your first message (/reset first)")
            return
        self.history[:] = [Message("assistant", self.greetings[int(arg) - 1])]
        self.out(self.greetings[int(arg) - 1])

    def stats_text(self) -> str:
        report = self.engine.report
        lines = []
        if report is not None:
            lines.append(
                f"model {report.path.name}: {report.placement}, ctx {report.n_ctx} "
                f"(trained {report.n_ctx_train}), {report.threads} threads, format: {self.format_note}"
            )
        in_window = len(self.history) - self.window.start
        lines.append(f"messages: {len(self.history)} ({in_window} in the window)")
        built = self.last_prompt
        if built is not None and built.tokens is not None:
            lines.append(
                f"last prompt: {len(built.tokens)} tokens ({built.pinned_tokens} pinned) of a budget of "
                f"{built.budget}; {len(built.dropped)} messages have left the window"
            )
        lines.append(f"last reply: {self.last_stats.summary()}" if self.last_stats else "last reply: none yet")
        if self.history:
            upcoming = self.builder.build(
                self.history,
                n_ctx=self.engine.n_ctx,
                reserve=self.reserve,
                state=WindowState(self.window.start, self.window.examples_dropped),
            )
            plan = self.engine.plan(upcoming.tokens or [])
            lines.append(f"next turn: your message plus {plan.to_evaluate} tokens to evaluate ({plan.reused} cached)")
        return "\n".join(lines)

    @property
    def reserve(self) -> int:
        return min(self.sampler.max_tokens, self.engine.n_ctx // 2)

    def reply(self, text: str | None) -> None:
        """A reply to `text`; None: the character speaks again after its own message (an empty line)."""
        from app.session.chat import speak_again_history

        if text is not None:
            if self.macros is not None:
                text = expand(text, self.macros)
            self.history.append(Message("user", text))
        try:
            prompt = self.history if text is not None else speak_again_history(self.builder, self.history)
            built = self.builder.build(prompt, n_ctx=self.engine.n_ctx, reserve=self.reserve, state=self.window)
        except CatteryError as exc:
            if text is not None:
                self.history.pop()
            self.note(f"error: {exc}")
            return
        if built.evicted_now:
            self.note(f"({len(built.evicted_now)} older messages left the context window)")
        self.last_prompt = built
        gen = self.engine.generate(built.tokens or built.text, self.sampler, stop=built.stop)
        previous = signal.getsignal(signal.SIGINT)
        in_main = _in_main_thread()
        if in_main:
            signal.signal(signal.SIGINT, lambda *_: gen.cancel())
        try:
            for piece in gen:
                self.stdout.write(piece)
                self.stdout.flush()
        except CatteryError as exc:
            if text is not None:
                self.history.pop()
            self.note(f"\nerror: {exc}")
            return
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
        self.stdout.write("\n")
        self.stdout.flush()
        self.last_stats = gen.stats
        self.history.append(Message("assistant", gen.text.strip()))
        if gen.stats and gen.stats.finish_reason == "cancelled":
            self.note("(stopped)")


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
