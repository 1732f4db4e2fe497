"""A checkpoint's tokenizer as GGUF metadata, the way llama.cpp's converter writes it.

Two kinds reach Cattery: SentencePiece (`tokenizer.model`: Llama 1/2, Mistral), written
as llama.cpp's "llama" tokenizer with scores and token types, and byte-level BPE
(`tokenizer.json`: Llama 3, GPT-2 style like SmolLM), written as "gpt2" with its merges
and the name of its pre-tokenizer. llama.cpp reads the pre-tokenizer from that name
only, so it is found as llama.cpp's converter finds it: by hashing how the tokenizer
encodes a fixed check string (assets/pre_tokenizers.toml).

The converter's rules are followed where they change what a model does: added tokens
that look special (`<|user|>`) are CONTROL even when not marked special, `▁` in other
added tokens becomes a space, the EOS of tokenizer_config.json wins over config.json
(gguf-py's `SpecialVocab`, which llama.cpp's converter uses, reads them in that order).
Nothing is added: a Llama-3-style end of turn (`<|eot_id|>`, `<|im_end|>`) needs no
EOT key, because llama.cpp finds it by its text when it loads the file and stops there
(tested), and the file stays byte for byte what llama.cpp's converter writes
(bench/llama_cpp_convert.py).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from hashlib import sha256
from pathlib import Path
from typing import Any

from app.errors import CatteryError
from converters.checkpoint import CheckpointError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# gguf.TokenType, which is also SentencePiece's piece type numbering.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class PreTokenizer:
    name: str
    hashes: tuple[str, ...]
    tokenizer_json: dict[str, Any] | None  # the tokenizer.json `pre_tokenizer` unpack writes
    ignore_merges: bool = False


@dataclass(frozen=True)
class PreTokenizerTable:
    check_text: str
    entries: tuple[PreTokenizer, ...]

    def by_hash(self, digest: str) -> str | None:
        found = None
        for e in self.entries:
            if digest in e.hashes:
                found = e.name  # like llama.cpp's chain of ifs, a later entry wins
        return found

    def get(self, name: str) -> PreTokenizer | None:
        return next((e for e in self.entries if e.name == name), None)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]


@lru_cache(maxsize=1)
def pre_tokenizers() -> PreTokenizerTable:
    from app.assets import asset_path

    path = asset_path("pre_tokenizers.toml")
    with path.open("rb") as f:
        data = tomllib.load(f)
    entries = []
    for item in data["pre_tokenizer"]:
        spec = item.get("tokenizer_json")
        entries.append(
            PreTokenizer(
                name=item["name"],
                hashes=tuple(item["hashes"]),
                tokenizer_json=json.loads(spec) if spec else None,
                ignore_merges=bool(item.get("ignore_merges", False)),
            )
        )
    return PreTokenizerTable(data["check_text"], tuple(entries))


def pre_tokenizer_hash(tokenizer: Any) -> str:
    """The check-string hash of a `tokenizers.Tokenizer` (special tokens added, as `encode` does)."""
    ids = tokenizer.encode(pre_tokenizers().check_text).ids
    return sha256(str(list(ids)).encode()).hexdigest()


def looks_special(token: str) -> bool:
    """llama.cpp's converter's test for added tokens that are control tokens in all but name."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


@dataclass
class GGUFVocab:
    """Everything `tokenizer.*` in the GGUF says, ready to write."""

    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    pre: str
    tokens: list[bytes]
    types: list[int]
    scores: list[float] | None
    special: Any  # gguf.SpecialVocab: merges, special token ids, add-BOS/EOS, chat template
    add_space_prefix: bool | None = None
    pre_hash: str | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    def token_id(self, text: str) -> int | None:
        raw = text.encode("utf-8")
        return next((i for i, t in enumerate(self.tokens) if t == raw), None)

    def write(self, writer: Any) -> None:
        """In llama.cpp's converter's order: prefix flag, model, pre, tokens, scores, types, specials."""
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        self.special.add_to_gguf(writer, quiet=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def load_vocab(folder: Path, vocab_size: int | None, *, pre_tokenizer: str | None = None) -> GGUFVocab:
    """The tokenizer in `folder`: tokenizer.model first (as llama.cpp's converter prefers), else tokenizer.json."""
    folder = Path(folder)
    config_path = folder / "tokenizer_config.json"
    tok_config = _read_json(config_path) if config_path.is_file() else {}
    if (folder / "tokenizer.model").is_file():
        vocab = _sentencepiece_vocab(folder, vocab_size, tok_config)
    elif (folder / "tokenizer.json").is_file():
        vocab = _bpe_vocab(folder, vocab_size, tok_config, pre_tokenizer)
    elif (folder / "tekken.json").is_file():
        raise CheckpointError(f"{folder}: a Mistral tekken.json tokenizer without tokenizer.json is not supported")
    else:
        raise CheckpointError(f"{folder}: no tokenizer (tokenizer.model or tokenizer.json)")
    add_prefix = tok_config.get("add_prefix_space")
    if isinstance(add_prefix, bool):
        vocab.add_space_prefix = add_prefix
    return vocab


def _special_vocab(folder: Path, n_vocab: int, *, merges: bool, post_processor: dict[str, Any] | None) -> Any:
    import logging

    import gguf

    # gguf-py logs a warning for every quirk it meets; Cattery reports what matters itself.
    logging.getLogger("gguf.vocab").setLevel(logging.ERROR)
    special = gguf.SpecialVocab(folder, load_merges=merges, n_vocab=n_vocab)
    _byte_level_adds_nothing(post_processor or {}, special)
    return special


def _post_processor(folder: Path) -> dict[str, Any] | None:
    """tokenizer.json's post-processor, for a SentencePiece folder that has one beside its model."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        post = json.loads(path.read_text(encoding="utf-8")).get("post_processor")
    except (OSError, ValueError, AttributeError):
        return None
    return post if isinstance(post, dict) else None


def _byte_level_adds_nothing(post: dict[str, Any], special: Any) -> None:
    """A ByteLevel post-processor adds no BOS or EOS, as llama.cpp's own gguf-py reads it.

    The gguf-py that llama.cpp converts with (newer than the one on PyPI) writes
    add_bos/add_eos = false for a tokenizer.json whose post-processor is ByteLevel
    (GPT-2 style, the bundled SmolLM2), whatever tokenizer_config.json says, unless a
    template processor beside it says otherwise; without this the file differs from
    llama.cpp's by one key.
    """
    types = {p.get("type") for p in post.get("processors", [post]) if isinstance(p, dict)}
    if "ByteLevel" not in types:
        return
    adds = dict(special.add_special_token)
    if types & {"TemplateProcessing", "RobertaProcessing"}:
        adds.setdefault("bos", False)
        adds.setdefault("eos", False)
        special.add_special_token = adds
    else:
        rest = {k: v for k, v in adds.items() if k not in ("bos", "eos")}
        special.add_special_token = {"bos": False, "eos": False, **rest}


def _sentencepiece_vocab(folder: Path, vocab_size: int | None, tok_config: dict[str, Any]) -> GGUFVocab:
    from sentencepiece import SentencePieceProcessor

    path = folder / "tokenizer.model"
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(path.read_bytes())
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a SentencePiece model ({exc})") from None
    n = vocab_size or sp.vocab_size()
    tokens = [f"[PAD{i}]".encode() for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    notes: list[str] = []
    if sp.vocab_size() > n:
        notes.append(f"tokenizer.model has {sp.vocab_size()} pieces, the model {n}: the extra pieces are left out")
    for i in range(min(n, sp.vocab_size())):
        kind = NORMAL
        if sp.IsUnknown(i):
            kind = UNKNOWN
        elif sp.IsControl(i):
            kind = CONTROL
        elif sp.IsUnused(i):
            kind = UNUSED
        elif sp.IsByte(i):
            kind = BYTE
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = sp.GetScore(i)
        types[i] = kind
    added_path = folder / "added_tokens.json"
    if added_path.is_file():
        for text, token_id in _read_json(added_path).items():
            if isinstance(token_id, int) and 0 <= token_id < n:
                tokens[token_id], scores[token_id], types[token_id] = text.encode("utf-8"), -1000.0, USER_DEFINED
    for key, entry in (tok_config.get("added_tokens_decoder") or {}).items():
        try:
            token_id, text = int(key), str(entry["content"])
        except (ValueError, KeyError, TypeError):
            raise CheckpointError(
                f"{folder / 'tokenizer_config.json'}: malformed added_tokens_decoder entry {key!r}"
            ) from None
        if not 0 <= token_id < n:
            notes.append(f"added token {text!r} has id {token_id}, outside the vocabulary of {n}: left out")
            continue
        if entry.get("special") or looks_special(text):
            types[token_id] = CONTROL
        else:
            text = text.replace("▁", " ")
            types[token_id] = USER_DEFINED
        tokens[token_id], scores[token_id] = text.encode("utf-8"), -1000.0
    special = _special_vocab(folder, len(tokens), merges=False, post_processor=_post_processor(folder))
    return GGUFVocab("llama", "default", tokens, types, scores, special, notes=notes)


def _bpe_vocab(
    folder: Path, vocab_size: int | None, tok_config: dict[str, Any], pre_tokenizer: str | None
) -> GGUFVocab:
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    data = _read_json(path)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise CheckpointError(f"{path}: a {model.get('type')} tokenizer; only BPE tokenizers are supported")
    if model.get("byte_fallback"):
        raise CheckpointError(
            f"{path}: a SentencePiece-style BPE tokenizer (byte fallback) without tokenizer.model; "
            "add the model's tokenizer.model to the folder"
        )
    try:
        tok = Tokenizer.from_str(json.dumps(data))
    except Exception as exc:  # the tokenizers library raises a bare Exception for bad files
        raise CheckpointError(f"{path}: the tokenizers library cannot read it ({exc})") from None

    digest = pre_tokenizer_hash(tok)
    table = pre_tokenizers()
    name = table.by_hash(digest)
    if pre_tokenizer:
        if pre_tokenizer not in table.names:
            raise CatteryError(
                f"--pre-tokenizer {pre_tokenizer}: not a pre-tokenizer llama.cpp knows "
                f"(one of {', '.join(sorted(set(table.names)))})"
            )
        name = pre_tokenizer
    elif name is None:
        raise CheckpointError(
            f"{path}: BPE pre-tokenizer not recognized (check-string hash {digest}); "
            "if you know which one it is, name it with --pre-tokenizer NAME"
        )

    vocab = tok.get_vocab(with_added_tokens=True)
    n = vocab_size or len(vocab)
    if max(vocab.values()) >= n:
        raise CheckpointError(f"{path}: token id {max(vocab.values())} is outside the model's vocabulary of {n}")
    added: dict[str, dict[str, Any]] = {}
    for entry in tok_config.get("added_tokens_decoder", {}).values():
        if isinstance(entry, dict) and "content" in entry:
            added[entry["content"]] = entry
    for entry in data.get("added_tokens") or []:
        added[entry["content"]] = entry
    reverse = {i: t for t, i in vocab.items()}
    tokens: list[bytes] = []
    types: list[int] = []
    for i in range(n):
        text = reverse.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]".encode())
            types.append(UNUSED)
            continue
        if text in added:
            entry = added[text]
            if not entry.get("normalized", not entry.get("special", False)):
                # llama.cpp takes CONTROL and USER_DEFINED tokens as already normalized
                text = tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False)
            if entry.get("special") or looks_special(text):
                types.append(CONTROL)
            else:
                text = text.replace("▁", " ")
                types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
        tokens.append(text.encode("utf-8"))
    post = data.get("post_processor")
    special = _special_vocab(folder, len(tokens), merges=True, post_processor=post if isinstance(post, dict) else None)
    if not special.merges:
        raise CheckpointError(f"{path}: the BPE tokenizer has no merges")
    return GGUFVocab("gpt2", name, tokens, types, None, special, pre_hash=digest)
