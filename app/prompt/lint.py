"""Checks of a format against a model's tokenizer: the mistakes that quietly ruin replies."""

from __future__ import annotations

import re

from app.prompt.builder import PromptBuilder
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
    if tokenizer is None:
        return warnings
    sample = [Message("user", "Hi"), Message("assistant", "Hello"), Message("user", "Bye")]
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
