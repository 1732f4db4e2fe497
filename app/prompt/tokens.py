"""Tokenizing prompt segments one at a time, so that they concatenate correctly.

SentencePiece tokenizers (Llama 1/2, Mistral) put a space in front of text that
starts a tokenization or follows a special token. A segment in the middle of a
prompt that starts with plain text (`You: …` after the previous line) would get that
space when tokenized alone but not in the running prompt. Such segments are
tokenized behind a newline, which is then taken off again.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

SENTINEL = "\n"


class SegmentTokenizer:
    def __init__(
        self,
        tokenize: Callable[[str], list[int]],
        detokenize: Callable[[list[int]], str],
        bos_token: int,
        add_bos: bool,
    ) -> None:
        self._tokenize = tokenize
        self._detokenize = detokenize
        self.bos_token = bos_token
        self.add_bos = add_bos
        self.adds_space_prefix = self._detokenize(self._tokenize("x")).startswith(" ")
        self._cached = lru_cache(maxsize=4096)(self._segment)

    def segment(self, text: str, first: bool = False) -> list[int]:
        """Tokens of `text` as it reads inside a prompt (`first`: at its very start)."""
        return list(self._cached(text, first))

    def _segment(self, text: str, first: bool) -> tuple[int, ...]:
        if not text:
            return ()
        plain = self._tokenize(text)
        if first or not self.adds_space_prefix:
            return tuple(plain)
        behind = self._tokenize(SENTINEL + text)
        for k in range(1, min(4, len(behind))):
            if self._detokenize(behind[:k]).strip(" ") == SENTINEL and self._detokenize(behind[k:]) == text:
                return tuple(behind[k:])
        return tuple(plain)

    def count(self, text: str) -> int:
        return len(self.segment(text))

    def detokenize(self, tokens: list[int]) -> str:
        return self._detokenize(tokens)

    def splits(self, marker: str) -> bool:
        """True when the tokenizer does not know `marker` as one special token."""
        return len(self._tokenize(marker)) != 1


def tokenizer_from(source: object) -> SegmentTokenizer:
    """A SegmentTokenizer over anything with `tokenize`, `detokenize`, `bos_token` and `add_bos`
    (the engine, or a vocabulary-only model)."""
    from typing import Any

    src: Any = source
    try:
        tokenize = src.segment_tokenize  # the engine: no BOS, on its own thread
    except AttributeError:

        def tokenize(text: str) -> list[int]:
            return src.tokenize(text, add_special=False, parse_special=True)

    return SegmentTokenizer(tokenize, src.detokenize, int(src.bos_token), bool(src.add_bos))
