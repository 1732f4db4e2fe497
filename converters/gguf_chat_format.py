"""One of Cattery's prompt formats written as a Jinja chat template, for `convert --chat-format`.

A GGUF carries its prompt format only as a Jinja template (`tokenizer.chat_template`);
writing Cattery's format there lets every other app that reads the file build the
same prompt. The template renders exactly what `app.prompt.segments.render_format`
does: the system block (or the format's default or empty block) first, every message
wrapped in its role's prefix and suffix, the generation prefix last. `{user}` and
`{char}` become the template variables `user_name` and `char_name` ("User" and
"Assistant" when an app does not set them), as Cattery's defaults are.
"""

from __future__ import annotations

import json

from app.prompt.formats import PromptFormat


def _lit(text: str) -> str:
    """A Jinja expression for `text`, with {user} and {char} as the speakers' names."""
    parts: list[str] = []
    rest = text
    while rest:
        cut = min((i for i in (rest.find("{user}"), rest.find("{char}")) if i >= 0), default=-1)
        if cut < 0:
            parts.append(json.dumps(rest, ensure_ascii=False))
            break
        if cut:
            parts.append(json.dumps(rest[:cut], ensure_ascii=False))
        parts.append("user" if rest.startswith("{user}", cut) else "char")
        rest = rest[cut + 6 :]
    return " + ".join(parts) if parts else '""'


def chat_template(fmt: PromptFormat) -> str:
    """The Jinja source of a chat template that renders like `fmt`."""
    default_block = (
        fmt.system_prefix + fmt.system_default + fmt.system_suffix if fmt.system_default else fmt.system_empty
    )
    # A system message after the first is an instruction: formats without a system role wrap it as a user turn.
    later = (fmt.user_prefix, fmt.user_suffix) if fmt.system_empty else (fmt.system_prefix, fmt.system_suffix)

    def content(speaker: str) -> str:
        if not fmt.names:
            return "message['content']"
        name = f"(message['name'] if message['name'] is defined and message['name'] else {speaker})"
        return f"{name} + ': ' + message['content']"

    def wrap(prefix: str, inner: str, suffix: str) -> str:
        return f"{{{{ {_lit(prefix)} + {inner} + {_lit(suffix)} }}}}"

    title = f"{fmt.name}: {fmt.description}" if fmt.description else fmt.name
    lines = [
        "{#- Cattery prompt format " + title.replace("#}", "# }") + " -#}",
        "{%- set user = user_name if user_name is defined else 'User' -%}",
        "{%- set char = char_name if char_name is defined else 'Assistant' -%}",
        "{%- set first_system = messages and messages[0]['role'] == 'system' -%}",
        "{%- set rest = messages[1:] if first_system else messages -%}",
        "{%- if first_system and messages[0]['content'] -%}",
        wrap(fmt.system_prefix, "messages[0]['content']", fmt.system_suffix),
        "{%- else -%}",
        f"{{{{ {_lit(default_block)} }}}}",
        "{%- endif -%}",
        "{%- for message in rest -%}",
        "{%- if message['role'] == 'user' -%}",
        wrap(fmt.user_prefix, content("user"), fmt.user_suffix),
        "{%- elif message['role'] == 'assistant' -%}",
        wrap(fmt.assistant_prefix, content("char"), fmt.assistant_suffix),
        "{%- else -%}",
        wrap(later[0], "message['content']", later[1]),
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}",
        f"{{{{ {_lit(fmt.generation)} }}}}",
        "{%- endif -%}",
    ]
    return "\n".join(lines)
