"""A checkpoint's tokenizer files read once, bounded and typed, before any library sees them.

Three readers meet these files: Cattery's own code, gguf-py's `SpecialVocab` (which reads
tokenizer.json, tokenizer_config.json, chat_template.*, additional_chat_templates/,
merges.txt and config.json itself, with plain `json.load` and duck typing), and the
native `tokenizers` and `sentencepiece` libraries (run contained: converters/contained.py).
Each file is checked here first, so that every later reader sees only a file of bounded
size and depth whose fields have the types it expects; what gguf-py still trips over is
caught where it is called (gguf_tokenizer.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters.errors import CheckpointError
from converters.untrusted_files import MiB, own_file, parse_json_bytes, read_bytes, read_json_if_present

MAX_TEMPLATE = 1 * MiB  # a chat template; honest ones are under 100 KB
MAX_EXTRA_TEMPLATES = 64
MAX_TOKEN_ID = (1 << 31) - 1
SPECIAL_KINDS = ("bos", "eos", "unk", "sep", "pad", "cls", "mask", "eot", "eom")
JSON_FILES = ("special_tokens_map.json", "generation_config.json", "vocab.json")


@dataclass
class TokenizerFiles:
    folder: Path
    config: dict[str, Any] = field(default_factory=dict)  # tokenizer_config.json
    tokenizer_json: dict[str, Any] | None = None
    tokenizer_text: bytes = b""  # tokenizer.json as read, for the tokenizers library
    added_tokens: dict[str, int] | None = None  # added_tokens.json
    sentencepiece: Path | None = None  # tokenizer.model

    @property
    def config_path(self) -> Path:
        return self.folder / "tokenizer_config.json"

    def decoder_entries(self) -> list[tuple[int, dict[str, Any]]]:
        """tokenizer_config.json's added_tokens_decoder as (id, entry), checked when read."""
        decoder = self.config.get("added_tokens_decoder") or {}
        return [(int(k), v) for k, v in decoder.items()]


def _is_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_TOKEN_ID


def _text(path: Path, folder: Path, limit: int) -> str:
    data = read_bytes(path, folder, max_bytes=limit, what="chat template")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _check_template(value: Any, source: str) -> None:
    if value is None:
        return
    if isinstance(value, str):
        if len(value) > MAX_TEMPLATE:
            raise CheckpointError(f"{source}: chat_template is {len(value):,} characters, more than {MAX_TEMPLATE:,}")
        return
    if isinstance(value, list) and all(
        isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str) for t in value
    ):
        if sum(len(t["template"]) for t in value) > MAX_TEMPLATE:
            raise CheckpointError(f"{source}: its chat templates hold more than {MAX_TEMPLATE:,} characters")
        return
    raise CheckpointError(f"{source}: chat_template should be a template (text), not {type(value).__name__}")


def _check_config(config: dict[str, Any], source: str) -> None:
    decoder = config.get("added_tokens_decoder")
    if decoder is not None:
        if not isinstance(decoder, dict):
            raise CheckpointError(f"{source}: added_tokens_decoder should map token ids to tokens")
        for key, entry in decoder.items():
            ok_key = key.isascii() and key.isdigit() and len(key) <= 10
            if not ok_key or not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
                raise CheckpointError(f"{source}: malformed added_tokens_decoder entry {key[:40]!r}")
    _check_template(config.get("chat_template"), source)
    for kind in SPECIAL_KINDS:
        value = config.get(f"{kind}_token")
        if value is not None and not isinstance(value, str | dict):
            raise CheckpointError(f"{source}: {kind}_token should be a token, not {type(value).__name__}")


def _check_tokenizer_json(data: dict[str, Any], source: str) -> None:
    model = data.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("type", "BPE"), str):
        raise CheckpointError(f"{source}: no tokenizer model (the `model` object)")
    vocab = model.get("vocab")
    if (
        model.get("type") == "BPE"
        and vocab is not None
        and (not isinstance(vocab, dict) or not all(_is_id(i) for i in vocab.values()))
    ):
        raise CheckpointError(f"{source}: the BPE vocabulary should map tokens to ids")
    merges = model.get("merges")
    if merges is not None:
        pairs = isinstance(merges, list) and (
            all(isinstance(m, str) for m in merges)
            or all(isinstance(m, list) and len(m) == 2 and all(isinstance(s, str) for s in m) for m in merges)
        )
        if not pairs:
            raise CheckpointError(f"{source}: merges should be a list of pairs of tokens")
    added = data.get("added_tokens")
    if added is not None:
        if not isinstance(added, list):
            raise CheckpointError(f"{source}: added_tokens should be a list")
        for entry in added:
            if not isinstance(entry, dict) or not isinstance(entry.get("content"), str) or not _is_id(entry.get("id")):
                raise CheckpointError(f"{source}: malformed added token {str(entry)[:60]!r}")
    post = data.get("post_processor")
    if post is not None:
        if not isinstance(post, dict):
            raise CheckpointError(f"{source}: post_processor should be an object")
        processors = post.get("processors", [post])
        if not isinstance(processors, list) or not all(isinstance(p, dict) for p in processors):
            raise CheckpointError(f"{source}: post_processor.processors should be a list of objects")
        for p in processors:
            for key in ("single", "pair"):
                steps = p.get(key, [])
                if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
                    raise CheckpointError(f"{source}: post_processor.{key} should be a list of objects")
                for s in steps:
                    for part in s.values():
                        if not isinstance(part, dict):
                            raise CheckpointError(f"{source}: post_processor.{key} holds a malformed step")
            for key in ("cls", "sep"):
                if key in p and (not isinstance(p[key], list) or not p[key]):
                    raise CheckpointError(f"{source}: post_processor.{key} should be a [token, id] pair")


def _check_extra_templates(folder: Path) -> None:
    extra = folder / "additional_chat_templates"
    if not extra.is_dir():
        return
    for found, path in enumerate(extra.glob("*.jinja"), start=1):
        if found > MAX_EXTRA_TEMPLATES:
            raise CheckpointError(f"{extra}: more than {MAX_EXTRA_TEMPLATES} chat templates")
        _text(path, folder, MAX_TEMPLATE)


def read_tokenizer_files(folder: Path) -> TokenizerFiles:
    """Every tokenizer file of `folder` checked (those present); what Cattery's own code reads, returned."""
    folder = Path(folder)
    out = TokenizerFiles(folder)
    config = read_json_if_present(folder / "tokenizer_config.json", folder)
    if config is not None:
        _check_config(config, str(folder / "tokenizer_config.json"))
        out.config = config
    path = folder / "tokenizer.json"
    if own_file(path, folder, required=False) is not None:
        raw = read_bytes(path, folder, what="tokenizer.json")
        data = parse_json_bytes(raw, str(path))
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: should be a JSON object, not {type(data).__name__}")
        _check_tokenizer_json(data, str(path))
        out.tokenizer_json, out.tokenizer_text = data, raw
    added = read_json_if_present(folder / "added_tokens.json", folder)
    if added is not None:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in added.values()):
            raise CheckpointError(f"{folder / 'added_tokens.json'}: should map tokens to ids")
        out.added_tokens = added
    for name in JSON_FILES:
        read_json_if_present(folder / name, folder)
    chat_json = read_json_if_present(folder / "chat_template.json", folder)
    if chat_json is not None:
        _check_template(chat_json.get("chat_template"), str(folder / "chat_template.json"))
    if own_file(folder / "chat_template.jinja", folder, required=False) is not None:
        _text(folder / "chat_template.jinja", folder, MAX_TEMPLATE)
    _check_extra_templates(folder)
    if own_file(folder / "merges.txt", folder, required=False) is not None:
        read_bytes(folder / "merges.txt", folder, what="merges file")
    sp = folder / "tokenizer.model"
    if own_file(sp, folder, required=False) is not None:
        out.sentencepiece = sp
    return out
