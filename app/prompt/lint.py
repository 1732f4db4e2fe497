"""Checks of a format against a model's tokenizer: the mistakes that quietly ruin replies.

A GGUF's own chat template is also checked for what it does to a chat: whether it renders a
plain chat at all, whether it takes a system prompt, and whether it renders message by
message (else every window is rendered whole, see app/prompt/segments.py).
"""

from __future__ import annotations

import re

from app.prompt.builder import PromptBuilder
from app.prompt.chat_template import TemplateRenderError
from app.prompt.segments import Message
from app.prompt.tokens import SegmentTokenizer

_MARKER = re.compile(r"<\|[^|<>\s]+\|>|</?s>|<<[A-Z]+>>")


def lint(builder: PromptBuilder, tokenizer: SegmentTokenizer | None) -> list[str]:
    warnings: list[str] = []
    fmt = builder.fmt
    speakers = builder.speakers
    if fmt is not None:
        turn_end = fmt.fill(fmt.assistant_suffix + fmt.user_prefix, speakers.user, speakers.char)
        stops = builder.stop
        if stops and not any(stop in turn_end for stop in stops):
            warnings.append(
                f"format {fmt.name}: none of its stop strings ({', '.join(map(repr, stops))}) appears where "
                f"an assistant turn ends ({turn_end!r}); replies may run on into the next turn"
            )
    sample = [Message("user", "Hi"), Message("assistant", "Hello"), Message("user", "Bye")]
    if fmt is None:
        try:
            warnings += template_warnings(builder, sample)
        except TemplateRenderError as exc:
            return [*warnings, f"format {builder.format_name}: the chat template cannot render a plain chat ({exc})"]
    if tokenizer is None:
        return warnings
    built = builder.build(sample, n_ctx=1 << 20, reserve=0)
    tokens = built.tokens or []
    if len(tokens) >= 2 and tokens[0] == tokens[1] == tokenizer.bos_token:
        warnings.append(f"format {builder.format_name}: the prompt starts with two BOS tokens")
    if fmt is not None:
        text = "".join(
            [
                fmt.system_prefix,
                fmt.system_suffix,
                fmt.user_prefix,
                fmt.user_suffix,
                fmt.assistant_prefix,
                fmt.assistant_suffix,
                fmt.generation,
            ]
        )
        for marker in dict.fromkeys(_MARKER.findall(text)):
            if tokenizer.splits(marker):
                warnings.append(
                    f"format {fmt.name}: {marker!r} is not a special token of this model; it is read as "
                    f"plain text ({tokenizer.count(marker)} tokens), so the model may not follow the format"
                )
    return warnings


def template_warnings(builder: PromptBuilder, sample: list[Message]) -> list[str]:
    """What a chat template does differently from a chat's plain expectations, in words."""
    built = builder.build(sample)
    warnings = list(built.notes)  # as a chat's own prompt says them (`cattery prompt` shows each once)
    if not built.segmentable:
        warnings.append(
            f"format {builder.format_name}: the chat template does not render message by message (its text "
            "for a conversation is not its text for the conversation before plus the new message: it writes a "
            "message differently once others follow, or by how many there are). Cattery renders the whole window "
            "as the template writes it every turn, slides it one message at a time, and reuses the cache only up "
            "to the first change, so long chats answer more slowly"
        )
    return warnings
