"""Render a GGUF file's own chat template (`tokenizer.chat_template`).

Templates come from downloaded files, so they are untrusted code: they run in
Jinja's immutable sandbox, never a plain Environment. The globals and filters are
the ones Hugging Face's renderer provides, which real templates rely on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from app.errors import CatteryError


class TemplateRenderError(CatteryError):
    """The model's chat template failed or refused the conversation."""


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Jinja's own tojson escapes <, > and & for HTML, which changes prompts.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    from jinja2 import TemplateSyntaxError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols], keep_trailing_newline=False
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateRenderError(f"the chat template does not parse: {exc.message} (line {exc.lineno})") from None


def render_chat_template(
    source: str,
    messages: Sequence[dict[str, str]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    **extra: Any,
) -> str:
    from jinja2.exceptions import SecurityError, TemplateError

    template = _compile(source)
    try:
        return template.render(
            messages=[dict(m) for m in messages],
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
            **extra,
        )
    except SecurityError as exc:
        raise TemplateRenderError(f"the chat template tried something unsafe and was stopped: {exc}") from None
    except TemplateError as exc:
        raise TemplateRenderError(f"the chat template failed: {exc}") from None


def fallback_template() -> str:
    """ChatML, for models whose GGUF carries no template (prompt formats arrive with issue 3)."""
    from app.assets import asset_path

    return asset_path("templates", "chatml.jinja").read_text(encoding="utf-8")
