"""The yardstick for chat templates: a render as Hugging Face's transformers does it, and the
checks of Cattery's `gguf` format against it (tests/unit/prompt/test_templates_exact.py, bench/templates.py).

transformers renders a chat template in an `ImmutableSandboxedEnvironment` with
`trim_blocks`, `lstrip_blocks`, the `loopcontrols` extension and its `{% generation %}` tag,
the globals `raise_exception` and `strftime_now` and a `tojson` filter that does not escape
HTML, and passes `messages`, `tools=None`, `documents=None`, `add_generation_prompt` and the
special tokens. This is that, written out here rather than imported, so that the yardstick
is not Cattery's own renderer (app/prompt/chat_template.py, which adds limits).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from app.engine.metadata import ModelInfo
from app.prompt.builder import BuiltPrompt, Opening, PromptBuilder
from app.prompt.segments import Message

TEMPLATES = Path(__file__).resolve().parent / "fixtures" / "templates"
SYSTEM = "You are a helpful cat."
POST = "Stay in character."
PREFIX = "Once upon"  # a reply being continued


def template_files() -> list[Path]:
    return sorted(TEMPLATES.glob("*.jinja"))


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class AssistantTracker(Extension):
        """transformers' `{% generation %}` tag; without an assistant mask it writes its body."""

        tags = {"generation"}  # noqa: RUF012 (Jinja's own convention)

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return nodes.CallBlock(self.call_method("_render_assistant"), [], [], body).set_lineno(lineno)

        def _render_assistant(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
    ) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker, loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


@lru_cache(maxsize=128)
def _compiled(source: str) -> Any:
    return _environment().from_string(source)


def reference(
    source: str,
    messages: Sequence[dict[str, str]],
    *,
    bos_token: str,
    eos_token: str,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
) -> str:
    """The template's text for `messages` as transformers' `apply_chat_template` renders it."""
    text = _compiled(source).render(
        messages=[dict(m) for m in messages],
        tools=None,
        documents=None,
        add_generation_prompt=add_generation_prompt and not continue_final_message,
        bos_token=bos_token,
        eos_token=eos_token,
    )
    if continue_final_message:  # cut right after the last message's text, as transformers does
        final = messages[-1]["content"].strip()
        text = text[: text.rindex(final) + len(final)]
    return text


def conversation(system: bool, turns: int) -> list[dict[str, str]]:
    """A system message (or none), then `turns` user messages with assistant replies between."""
    messages = [{"role": "system", "content": SYSTEM}] if system else []
    for i in range(1, turns + 1):
        messages.append({"role": "user", "content": f"Question number {i}?"})
        if i < turns:
            messages.append({"role": "assistant", "content": f"Answer number {i}."})
    return messages


def _fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation without its system message, whose text opens the first user message."""
    rest = [dict(m) for m in messages[1:]]
    rest[0]["content"] = f"{messages[0]['content']}\n\n{rest[0]['content']}"
    return rest


@dataclass
class TemplateReport:
    """How Cattery's `gguf` format did with one template, over every conversation tried."""

    name: str
    checked: int = 0  # conversations whose text was compared
    refuses_system: bool = False  # raise_exception on a system message: run without one
    refuses_chat: str | None = None  # the reference's error on a plain chat with no system message
    not_segmentable: list[str] = field(default_factory=list)  # the conversations rendered whole
    failures: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not self.failures

    @property
    def segmentable(self) -> bool:
        return not self.not_segmentable


def _differs(got: str, want: str) -> str:
    k = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    around = slice(max(0, k - 40), k + 40)
    return f"differs at character {k}: Cattery {got[around]!r}, reference {want[around]!r}"


def check_template(path: Path, info: ModelInfo) -> TemplateReport:
    """Every conversation (system or not, 1 to 3 user turns; a post-history instruction and a
    continued reply with 2) through Cattery's `gguf` format, against the reference."""
    from app.prompt.chat_template import TemplateRenderError

    source = path.read_text(encoding="utf-8")
    info = copy.copy(info)
    info.chat_template = source
    bos, eos = info.bos_token or "", info.eos_token or ""
    report = TemplateReport(path.stem)
    previous: dict[bool, BuiltPrompt] = {}
    for system in (True, False):
        for turns in (1, 2, 3):
            what = f"{'system' if system else 'no system'}, {turns} user turn{'s' if turns > 1 else ''}"
            messages = conversation(system, turns)
            history = [Message(m["role"], m["content"]) for m in messages if m["role"] != "system"]
            try:
                want = reference(source, messages, bos_token=bos, eos_token=eos)
            except Exception as exc:
                if system:  # no system role? then Cattery folds it into the first user message
                    try:
                        want = reference(source, _fold_system(messages), bos_token=bos, eos_token=eos)
                    except Exception:
                        continue  # refuses more than the system role: judged without one
                    report.refuses_system = True
                else:
                    report.refuses_chat = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
                    try:
                        PromptBuilder("gguf", info=info).build(history)
                    except TemplateRenderError:
                        continue  # refused in one line, as the reference refuses it
                    report.failures.append(f"{what}: the reference refuses it, Cattery rendered it")
                    continue
            builder = PromptBuilder("gguf", info=info, system=SYSTEM if system else None)
            try:
                built = builder.build(history)
            except Exception as exc:
                report.failures.append(f"{what}: Cattery failed: {exc}")
                continue
            report.checked += 1
            if built.text != want:
                report.failures.append(f"{what}: {_differs(built.text, want)}")
            if "".join(s.text for s in built.segments) != built.text:
                report.failures.append(f"{what}: the segments do not make the text")
            if not built.segmentable:
                report.not_segmentable.append(what)
            elif system in previous and previous[system].segmentable:
                # One turn more keeps every segment before it (what KV-cache reuse relies on).
                before = [s.text for s in previous[system].segments if s.kind != "generation"]
                if [s.text for s in built.segments[: len(before)]] != before:
                    report.failures.append(f"{what}: the segments of the turns before changed")
            previous[system] = built
            if turns == 2:
                report.failures += _check_post(info, system, history, messages, what)
                report.failures += _check_continue(builder, history, messages, what)
    return report


def _check_post(
    info: ModelInfo, system: bool, history: list[Message], messages: list[dict[str, str]], what: str
) -> list[str]:
    """Post-history instructions are a system message right before the reply, as the template
    renders one there; a template that refuses it, leaves it out or writes it elsewhere (DeepSeek
    gathers system messages at the start) gets them at the end of the last user message."""
    source, bos, eos = info.chat_template or "", info.bos_token or "", info.eos_token or ""
    builder = PromptBuilder("gguf", info=info, system=SYSTEM if system else None, post_history=POST)
    built = builder.build(history)
    base = _as_cattery_sends(source, messages, bos, eos)
    try:
        want = reference(source, [*base, {"role": "system", "content": POST}], bos_token=bos, eos_token=eos)
        last = base[-1]["content"]
        if want.find(POST, want.rfind(last) + len(last)) < 0:
            raise ValueError("left out, or not after the last message")
    except Exception:
        folded = [dict(m) for m in base]
        folded[-1]["content"] = f"{folded[-1]['content']}\n\n{POST}"
        want = reference(source, folded, bos_token=bos, eos_token=eos)
    return [] if built.text == want else [f"{what}, post-history: {_differs(built.text, want)}"]


def _check_continue(
    builder: PromptBuilder, history: list[Message], messages: list[dict[str, str]], what: str
) -> list[str]:
    """A continued reply ends in the reply's text so far, as `continue_final_message` renders it."""
    assert builder.info is not None
    source, bos, eos = builder.info.chat_template or "", builder.info.bos_token or "", builder.info.eos_token or ""
    built = builder.build(history, opening=Opening("assistant", PREFIX))
    base = _as_cattery_sends(source, messages, bos, eos)
    want = reference(
        source,
        [*base, {"role": "assistant", "content": PREFIX}],
        bos_token=bos,
        eos_token=eos,
        continue_final_message=True,
    )
    return [] if built.text == want else [f"{what}, continued reply: {_differs(built.text, want)}"]


def _as_cattery_sends(source: str, messages: list[dict[str, str]], bos: str, eos: str) -> list[dict[str, str]]:
    """The conversation, with the system message folded into the first user message where the
    template refuses one."""
    if not messages or messages[0]["role"] != "system":
        return messages
    try:
        reference(source, messages, bos_token=bos, eos_token=eos)
    except Exception:
        return _fold_system(messages)
    return messages
