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
from converters.errors import CheckpointError
from converters.tokenizer_check import TokenizerFiles, read_tokenizer_files
from converters.untrusted_files import read_bytes

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


def load_vocab(folder: Path, vocab_size: int | None, *, pre_tokenizer: str | None = None) -> GGUFVocab:
    """The tokenizer in `folder`: tokenizer.model first (as llama.cpp's converter prefers), else tokenizer.json.

    Every file is checked first (converters/tokenizer_check.py); the native libraries run
    in a contained child (converters/contained.py).
    """
    folder = Path(folder)
    files = read_tokenizer_files(folder)
    if files.sentencepiece is not None:
        vocab = _sentencepiece_vocab(files, vocab_size)
    elif files.tokenizer_json is not None:
        vocab = _bpe_vocab(files, vocab_size, pre_tokenizer)
    elif (folder / "tekken.json").is_file():
        raise CheckpointError(f"{folder}: a Mistral tekken.json tokenizer without tokenizer.json is not supported")
    else:
        raise CheckpointError(f"{folder}: no tokenizer (tokenizer.model or tokenizer.json)")
    add_prefix = files.config.get("add_prefix_space")
    if isinstance(add_prefix, bool):
        vocab.add_space_prefix = add_prefix
    return vocab


def _utf8(text: str, source: Path) -> bytes:
    """A token's text as GGUF stores it; JSON can spell a lone surrogate (\\ud800), which has no UTF-8."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError(f"{source}: token {text[:40]!r} is not valid Unicode text") from None


# What gguf-py's SpecialVocab raises on files that are well-formed JSON of unexpected shapes.
_DATA_ERRORS = (TypeError, ValueError, KeyError, AttributeError, IndexError, UnicodeError, RecursionError)


def _special_vocab(folder: Path, n_vocab: int, *, merges: bool, post_processor: dict[str, Any] | None) -> Any:
    import logging

    import gguf

    class SpecialVocab(gguf.SpecialVocab):  # type: ignore[misc]
        def _set_special_token(self, typ: str, tid: Any) -> None:
            # transformers writes pad_token_id = -1 for "none" in old Llama configs; gguf-py raises on it
            if isinstance(tid, int) and tid < 0:
                return
            super()._set_special_token(typ, tid)

    # gguf-py logs a warning for every quirk it meets; Cattery reports what matters itself.
    logging.getLogger("gguf.vocab").setLevel(logging.ERROR)
    try:
        special = SpecialVocab(folder, load_merges=merges, n_vocab=n_vocab)
    except _DATA_ERRORS as exc:
        raise CheckpointError(f"{folder}: the tokenizer files are malformed ({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        raise CheckpointError(f"{folder}: cannot read the tokenizer files ({exc.strerror or exc})") from None
    if not all(isinstance(m, str) for m in special.merges):
        raise CheckpointError(f"{folder}: the tokenizer's merges are malformed")
    _byte_level_adds_nothing(post_processor or {}, special)
    return special


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


def _sentencepiece_pieces(model: bytes, n: int) -> tuple[int, list[bytes], list[float], list[int]]:
    """(pieces in the model, then the first n pieces' text, score and type): runs in a contained child."""
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(model)
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"not a SentencePiece model ({exc})") from None
    count = sp.vocab_size()
    tokens, scores, types = [], [], []
    for i in range(min(n, count)):
        kind = NORMAL
        if sp.IsUnknown(i):
            kind = UNKNOWN
        elif sp.IsControl(i):
            kind = CONTROL
        elif sp.IsUnused(i):
            kind = UNUSED
        elif sp.IsByte(i):
            kind = BYTE
        tokens.append(sp.IdToPiece(i).encode("utf-8"))
        scores.append(float(sp.GetScore(i)))
        types.append(kind)
    return count, tokens, scores, types


def _sentencepiece_vocab(files: TokenizerFiles, vocab_size: int | None) -> GGUFVocab:
    from converters.contained import cpu_budget, run_contained

    folder = files.folder
    assert files.sentencepiece is not None
    path = files.sentencepiece
    model = read_bytes(path, folder, what="SentencePiece model")
    if vocab_size is None:  # only for a caller without a config: the model's own count
        vocab_size, *_ = run_contained(
            _sentencepiece_pieces, model, 0, what=str(path), cpu_seconds=cpu_budget(len(model))
        )
    n = int(vocab_size)
    try:
        count, pieces, piece_scores, piece_types = run_contained(
            _sentencepiece_pieces, model, n, what=str(path), cpu_seconds=cpu_budget(len(model))
        )
    except CheckpointError as exc:
        message = str(exc)
        raise CheckpointError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    tokens = [f"[PAD{i}]".encode() for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    tokens[: len(pieces)], scores[: len(pieces)], types[: len(pieces)] = pieces, piece_scores, piece_types
    notes: list[str] = []
    if count > n:
        notes.append(f"tokenizer.model has {count} pieces, the model {n}: the extra pieces are left out")
    for text, token_id in (files.added_tokens or {}).items():
        if 0 <= token_id < n:
            tokens[token_id], scores[token_id], types[token_id] = (
                _utf8(text, folder / "added_tokens.json"),
                -1000.0,
                USER_DEFINED,
            )
    for token_id, entry in files.decoder_entries():
        text = entry["content"]
        if not 0 <= token_id < n:
            notes.append(f"added token {text[:40]!r} has id {token_id}, outside the vocabulary of {n}: left out")
            continue
        if entry.get("special") or looks_special(text):
            types[token_id] = CONTROL
        else:
            text = text.replace("▁", " ")
            types[token_id] = USER_DEFINED
        tokens[token_id], scores[token_id] = _utf8(text, files.config_path), -1000.0
    post = (files.tokenizer_json or {}).get("post_processor")
    special = _special_vocab(folder, len(tokens), merges=False, post_processor=post if isinstance(post, dict) else None)
    return GGUFVocab("llama", "default", tokens, types, scores, special, notes=notes)


def _bpe_analyse(text: str, normalize: list[str]) -> tuple[str, dict[str, int], dict[str, str]]:
    """(check-string hash, vocabulary with added tokens, each text of `normalize` as the tokenizer normalizes
    it) from tokenizer.json's text: the `tokenizers` library's part, run in a contained child."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_str(text)
    except Exception as exc:  # the tokenizers library raises a bare Exception for bad files
        raise CheckpointError(f"the tokenizers library cannot read it ({exc})") from None
    digest = pre_tokenizer_hash(tok)
    vocab = tok.get_vocab(with_added_tokens=True)
    normalized = {
        t: tok.decode(tok.encode(t, add_special_tokens=False).ids, skip_special_tokens=False) for t in normalize
    }
    return digest, vocab, normalized


def _bpe_vocab(files: TokenizerFiles, vocab_size: int | None, pre_tokenizer: str | None) -> GGUFVocab:
    from converters.contained import cpu_budget, run_contained

    path = files.folder / "tokenizer.json"
    data = files.tokenizer_json
    assert data is not None
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise CheckpointError(f"{path}: a {str(model.get('type'))[:40]} tokenizer; only BPE tokenizers are supported")
    if model.get("byte_fallback"):
        raise CheckpointError(
            f"{path}: a SentencePiece-style BPE tokenizer (byte fallback) without tokenizer.model; "
            "add the model's tokenizer.model to the folder"
        )
    table = pre_tokenizers()
    if pre_tokenizer and pre_tokenizer not in table.names:
        raise CatteryError(
            f"--pre-tokenizer {pre_tokenizer}: not a pre-tokenizer llama.cpp knows "
            f"(one of {', '.join(sorted(set(table.names)))})"
        )
    added: dict[str, dict[str, Any]] = {}
    for _token_id, entry in files.decoder_entries():
        added[entry["content"]] = entry
    for entry in data.get("added_tokens") or []:
        added[entry["content"]] = entry
    normalize = [t for t, e in added.items() if not e.get("normalized", not e.get("special", False))]
    n_tokens = len(model.get("vocab") or {})
    if vocab_size and n_tokens > vocab_size:  # refused before the tokenizers library builds them all
        raise CheckpointError(f"{path}: {n_tokens:,} tokens, more than the model's vocabulary of {vocab_size:,}")
    try:
        text = files.tokenizer_text.decode("utf-8-sig")
        digest, vocab, normalized = run_contained(
            _bpe_analyse, text, normalize, what=str(path), cpu_seconds=cpu_budget(len(text))
        )
    except CheckpointError as exc:
        message = str(exc)
        raise CheckpointError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    name = table.by_hash(digest)
    if pre_tokenizer:
        name = pre_tokenizer
    elif name is None:
        raise CheckpointError(
            f"{path}: BPE pre-tokenizer not recognized (check-string hash {digest}); "
            "if you know which one it is, name it with --pre-tokenizer NAME"
        )
    n = vocab_size or len(vocab)
    if vocab and max(vocab.values()) >= n:
        raise CheckpointError(f"{path}: token id {max(vocab.values())} is outside the model's vocabulary of {n}")
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
            if text in normalized:
                # llama.cpp takes CONTROL and USER_DEFINED tokens as already normalized
                text = normalized[text]
            if entry.get("special") or looks_special(text):
                types.append(CONTROL)
            else:
                text = text.replace("▁", " ")
                types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
        tokens.append(_utf8(text, path))
    post = data.get("post_processor")
    special = _special_vocab(
        files.folder, len(tokens), merges=True, post_processor=post if isinstance(post, dict) else None
    )
    if not special.merges:
        raise CheckpointError(f"{path}: the BPE tokenizer has no merges")
    return GGUFVocab("gpt2", name, tokens, types, None, special, pre_hash=digest)
