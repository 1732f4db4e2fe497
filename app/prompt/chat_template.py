"""Render a GGUF file's own chat template (`tokenizer.chat_template`).

Templates come from downloaded files, so they are untrusted code: they run in a
sandbox with limits on time, memory and size (`jinja_sandbox`), never a plain
Environment. The globals and filters are the ones Hugging Face's renderer provides,
which real templates rely on.

Whatever goes wrong in a template, including errors its own code raises (a division
by zero, a missing key, a macro recursing forever), becomes a `TemplateRenderError`
of one line naming the model file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from app.errors import InputError
from app.prompt.jinja_limits import MAX_TEMPLATE_CHARS, Budget, LimitExceeded

__all__ = [
    "Budget",
    "TemplateRenderError",
    "TemplateUnsafeError",
    "render_chat_template",
]

MAX_MESSAGE = 300  # characters of a template's own error message kept in the one line
MAX_STRFTIME = 256


class TemplateRenderError(InputError):
    """The model's chat template failed or refused the conversation."""


class TemplateUnsafeError(TemplateRenderError):
    """The sandbox stopped the template (a limit, an unsafe access) or it cannot be compiled.

    Unlike a template refusing a conversation (`raise_exception('System role not
    supported')`), this is not worth a second try with other messages.
    """


def _one_line(text: str) -> str:
    text = " ".join(text[: MAX_MESSAGE * 4].split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


_LINE_BREAK = re.compile("[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


def _where(model: str) -> str:
    """`model: ` for the start of the line; a line break in a file name is shown, not kept."""
    return _LINE_BREAK.sub(lambda m: f"\\u{ord(m.group()):04x}", model) + ": " if model else ""


def _raise_exception(message: Any) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(_one_line(str(message)))


def _strftime_now(fmt: Any) -> str:
    if not isinstance(fmt, str) or len(fmt) > MAX_STRFTIME:
        raise LimitExceeded(f"it gave strftime_now a format that is not text of at most {MAX_STRFTIME} characters")
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Jinja's own tojson escapes <, > and & for HTML, which changes prompts.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=1)
def _environment() -> Any:
    from app.prompt.jinja_sandbox import LimitedEnvironment

    return LimitedEnvironment(
        filters={"tojson": _tojson},
        globals={"raise_exception": _raise_exception, "strftime_now": _strftime_now},
    )


@dataclass(frozen=True)
class _Prepared:
    template: Any = None
    problem: str = ""  # why it cannot be used, when it cannot


@lru_cache(maxsize=16)
def _prepare(source: str) -> _Prepared:
    """The compiled template, or the one line saying why not (kept, so a bad template is
    refused at once on every later turn, not parsed again)."""
    from jinja2 import TemplateSyntaxError

    from app.prompt.jinja_sandbox import TemplateProblem

    try:
        return _Prepared(_environment().prepare(source))
    except TemplateSyntaxError as exc:
        return _Prepared(problem=f"does not parse: {_one_line(exc.message or '')} (line {exc.lineno})")
    except TemplateProblem as exc:
        return _Prepared(problem=f"cannot be used: {exc}")
    except (RecursionError, MemoryError, SyntaxError):
        # Jinja's parser and Python's compiler recurse over the nesting of blocks and
        # expressions: deep nesting ends here, or in "too many levels of indentation".
        return _Prepared(problem="cannot be compiled: it nests blocks or expressions too deeply")
    except Exception as exc:
        return _Prepared(problem=f"cannot be compiled: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "it recursed too deeply"
    if isinstance(exc, MemoryError):
        return "it ran out of memory"
    message = str(exc)
    if isinstance(exc, KeyError):
        return _one_line(f"no key {message}")
    return _one_line(message) if message else type(exc).__name__


def _input_chars(messages: list[dict[str, Any]], variables: dict[str, Any]) -> int:
    total = sum(len(v) for m in messages for v in m.values() if isinstance(v, str))
    return total + sum(len(v) for v in variables.values() if isinstance(v, str))


def render_chat_template(
    source: str,
    messages: Sequence[dict[str, str]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    model: str = "",
    budget: Budget | None = None,
    **extra: Any,
) -> str:
    """`source` rendered for `messages`, within the sandbox's limits.

    `model` names the file the template came from, for the error's one line; `budget`
    is time shared with the other renders of the same prompt.
    """
    from jinja2.exceptions import SecurityError, TemplateError

    from app.prompt.jinja_sandbox import render

    where = _where(model)
    if not isinstance(source, str):
        raise TemplateUnsafeError(f"{where}the chat template is not text but {type(source).__name__}")
    if len(source) > MAX_TEMPLATE_CHARS:  # refused before the cache, which would keep it
        raise TemplateUnsafeError(
            f"{where}the chat template cannot be used: it is {len(source):,} characters long, "
            f"more than {MAX_TEMPLATE_CHARS:,}"
        )
    prepared = _prepare(source)
    if prepared.template is None:
        raise TemplateUnsafeError(f"{where}the chat template {prepared.problem}")
    given = [dict(m) for m in messages]
    # What Hugging Face's renderer passes for a plain chat: `tools` and `documents` are there,
    # as None (`tools is defined` holds), unless given.
    variables: dict[str, Any] = {"tools": None, "documents": None}
    variables.update(bos_token=bos_token, eos_token=eos_token, add_generation_prompt=add_generation_prompt)
    variables.update(extra)
    if budget is not None:
        budget.allow(len(given))
    try:
        return render(
            prepared.template,
            {"messages": given, **variables},
            input_chars=_input_chars(given, variables),
            budget=budget,
        )
    except LimitExceeded as exc:
        raise TemplateUnsafeError(f"{where}the chat template was stopped: {exc}") from None
    except SecurityError as exc:
        raise TemplateUnsafeError(
            f"{where}the chat template tried something unsafe and was stopped: {_one_line(str(exc))}"
        ) from None
    except TemplateError as exc:
        raise TemplateRenderError(f"{where}the chat template failed: {_one_line(str(exc))}") from None
    except (RecursionError, MemoryError) as exc:
        raise TemplateUnsafeError(f"{where}the chat template was stopped: {_describe(exc)}") from None
    except Exception as exc:
        raise TemplateRenderError(f"{where}the chat template failed: {_describe(exc)}") from None
