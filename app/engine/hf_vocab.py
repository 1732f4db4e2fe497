"""A Hugging Face `tokenizer.json` as the vocabulary that counts a remote engine's tokens.

A server that has no tokenize endpoint (a plain OpenAI-compatible one) still needs the window
counted in its model's tokens. Its hub repo almost always holds `tokenizer.json` (a few MB), so
the user need not download gigabytes of GGUF for the vocabulary alone. The `tokenizers` library
reads it; `tokenizer_config.json` beside it, where there is one, gives the chat template and the
BOS/EOS texts, so the served model's own template can be the prompt format.

Both files come from outside: each is size-checked before it is parsed, and anything the
library refuses is one line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import CatteryError

MAX_TOKENIZER_BYTES = 64 << 20  # the largest real ones (Gemma's) are ~35 MB
MAX_CONFIG_BYTES = 4 << 20  # tokenizer_config.json: a template and a token table
MAX_TEMPLATE_CHARS = 1 << 20


@dataclass(frozen=True)
class TokenizerConfig:
    """What tokenizer_config.json says that a chat needs: the template and the special texts."""

    chat_template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None


def tokenizer_file(path: Path) -> Path:
    """The tokenizer.json meant by `path`: the file itself, or the one in a folder."""
    path = Path(path).expanduser()
    found = path / "tokenizer.json" if path.is_dir() else path
    if not found.is_file():
        raise CatteryError(f"{found}: no such tokenizer file")
    return found


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise CatteryError(f"{path}: {what} of {size >> 20} MB is larger than any real one ({limit >> 20} MB)")
        return path.read_bytes()
    except OSError as exc:
        raise CatteryError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def _special_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and len(value) <= 256 else None


def read_tokenizer_config(folder: Path) -> TokenizerConfig:
    """tokenizer_config.json beside a tokenizer.json; empty when there is none or it is unusable
    (the counts do not need it, only the template)."""
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return TokenizerConfig()
    try:
        data = json.loads(_read_bounded(path, MAX_CONFIG_BYTES, "tokenizer config"))
    except (CatteryError, ValueError, RecursionError):
        return TokenizerConfig()
    if not isinstance(data, dict):
        return TokenizerConfig()
    template = data.get("chat_template")
    if isinstance(template, list):  # several named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str) or len(template) > MAX_TEMPLATE_CHARS:
        template = None
    return TokenizerConfig(template, _special_text(data.get("bos_token")), _special_text(data.get("eos_token")))


class JsonVocab:
    """A tokenizer.json with the surface RemoteEngine uses of a GGUF's vocabulary."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self.path = tokenizer_file(path)
        raw = _read_bounded(self.path, MAX_TOKENIZER_BYTES, "tokenizer")
        try:
            self._tok = Tokenizer.from_str(raw.decode("utf-8"))
        except (UnicodeDecodeError, Exception) as exc:  # the library raises plain Exception
            line = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise CatteryError(f"{self.path}: not a tokenizer the tokenizers library can read ({line})") from None
        self.config = read_tokenizer_config(self.path.parent)
        # The BOS is whatever the tokenizer's post-processor puts before any text (Llama 3's
        # <|begin_of_text|>; none for SmolLM2), as Cattery adds it itself where the model wants it.
        plain = self._tok.encode("x", add_special_tokens=False).ids
        special = self._tok.encode("x", add_special_tokens=True).ids
        lead = special[: len(special) - len(plain)] if special[-len(plain) :] == plain else []
        self.add_bos = bool(lead)
        bos = lead[0] if lead else self._id(self.config.bos_token)
        self.bos_token = bos if bos is not None else -1
        eos = self._id(self.config.eos_token)
        self.eos_token = eos if eos is not None else -1

    def _id(self, text: str | None) -> int | None:
        return self._tok.token_to_id(text) if text else None

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        """Special tokens written in the text (`<|im_start|>`) are read as themselves, as llama.cpp's
        parse_special does: the tokenizers library does that for every added token."""
        ids = self._tok.encode(text, add_special_tokens=add_special).ids
        return list(ids)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return str(self._tok.decode(list(tokens), skip_special_tokens=False))

    def close(self) -> None:
        self._tok = None
