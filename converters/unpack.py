"""GGUF → Hugging Face checkpoint: the way back from `cattery convert`.

The weights are dequantized with gguf-py (F32 where the GGUF is quantized, so the
values are exact; F16/BF16 stay as they are), the Q/K rows are put back in HF's
order, and the tensors are written in the order HF's safetensors files list them
(alphabetical), which is also the order converting back writes them. The folder gets
what a converter needs: config.json (LlamaForCausalLM), generation_config.json, a
README.md whose front matter carries the GGUF's general.* names, and the tokenizer:
tokenizer.json for BPE (its pre-tokenizer rebuilt from the name llama.cpp gave it,
assets/pre_tokenizers.toml) or tokenizer.model for SentencePiece (the model proto
rebuilt from the GGUF's pieces, scores and types), with tokenizer_config.json.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from app.atomic import write_text_atomic
from app.engine.gguf_header import ARRAY, FLOAT32, INT32, STRING, quoted
from app.engine.metadata import (
    LLAMA_MAX_LAYERS,
    MAX_FEED_FORWARD,
    MAX_HEAD_DIM,
    MAX_HEADS,
    MAX_ROPE_BASE,
    MAX_ROPE_FACTOR,
    MIN_ROPE_BASE,
)
from app.errors import CatteryError
from app.progress import Progress, TensorCounter
from converters.gguf_read import GGUFFile
from converters.partials import clean_leftovers, hold_folder

DTYPES = ("F32", "F16", "BF16")
MAX_WIDTH = MAX_FEED_FORWARD  # embedding and feed-forward sizes
TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPECIAL_KINDS = ("bos", "eos", "unk", "sep", "pad", "mask")
_GGUF_SPECIAL_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",
    "pad": "tokenizer.ggml.padding_token_id",
    "mask": "tokenizer.ggml.mask_token_id",
}


def unpack(src_gguf: Path, out_dir: Path, *, progress: Progress | None = None, dtype: str | None = None) -> Path:
    """Write the HF folder for `src_gguf` into `out_dir`; returns `out_dir`.

    `dtype` (F32, F16, BF16) sets the weights' type; by default F16/BF16/F32 tensors keep
    theirs and quantized ones become F32 (their exact values). Norms are always F32.
    """
    from converters.checkpoint import ShardedWriter, TensorPlan
    from converters.gguf_tensors import hf_names_by_gguf, unpermute

    src_gguf, out_dir = Path(src_gguf), Path(out_dir)
    if dtype is not None and dtype.upper() not in DTYPES:
        raise CatteryError(f"unknown weight type {dtype!r} (one of {', '.join(DTYPES)})")
    g = GGUFFile.open(src_gguf)
    arch = g.text("general.architecture")
    if arch != "llama":
        raise CatteryError(
            f"{src_gguf}: a {quoted(str(arch))} model; only llama-architecture GGUF files can be unpacked"
        )
    if (g.integer("split.count", 1, hi=65535) or 1) > 1:
        raise CatteryError(f"{src_gguf}: one part of a split GGUF; merge the parts first (llama-gguf-split --merge)")
    _check_output(out_dir)
    config = _config(g, src_gguf)
    n_layers, n_head, n_kv = config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]
    to_hf = hf_names_by_gguf(n_layers)

    import gguf

    infos = {}
    for t in g.tensors:
        if t.name == "rope_freqs.weight":
            continue  # rebuilt as config.json's rope_scaling
        if t.name not in to_hf:
            raise CatteryError(f"{src_gguf}: tensor {t.name} has no place in a Hugging Face llama model")
        infos[to_hf[t.name]] = t
    if "lm_head.weight" not in infos:
        config["tie_word_embeddings"] = True
    _check_head_rows(src_gguf, infos, n_head, n_kv)

    def out_type(info: Any) -> str:
        if len(info.shape) < 2:
            return "F32"
        if dtype is not None:
            return dtype.upper()
        name = gguf.GGMLQuantizationType(info.ggml_type).name
        return name if name in DTYPES else "F32"

    names = sorted(infos)  # as HF's safetensors files list them
    plan = [TensorPlan(n, out_type(infos[n]), tuple(reversed(infos[n].shape))) for n in names]
    weight_types = {p.dtype for p in plan if len(p.shape) > 1}
    config["torch_dtype"] = TORCH_DTYPES[weight_types.pop() if len(weight_types) == 1 else "F32"]

    # Everything is written into a temporary folder beside the output and renamed into place when
    # complete: an interrupted unpack (Ctrl+C, a full disk, a crash) leaves nothing under the final
    # name, and a killed one's folder is removed by the next run (converters/partials.py).
    final = Path(os.path.abspath(out_dir))
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(final.parent)
    held = hold_folder(final.parent, final.name)
    tmp = held.path
    try:
        _write_tokenizer(g, src_gguf, tmp, config)
        counter = TensorCounter(progress, [p.nbytes for p in plan])
        with ShardedWriter(tmp, plan, metadata={"format": "pt"}) as w:
            for name in names:
                data = g.f32(infos[name])
                if name.endswith(("q_proj.weight", "q_proj.bias")):
                    data = unpermute(data, n_head)
                elif name.endswith(("k_proj.weight", "k_proj.bias")):
                    data = unpermute(data, n_kv)
                w.write(name, data)
                del data
                counter.step(name)
            w.close()
        write_text_atomic(tmp / "config.json", json.dumps(config, indent=2) + "\n")
        _write_generation_config(g, tmp, config)
        _write_model_card(g, tmp, final.name)
        _check_output(final)  # still new or empty: nothing else wrote there meanwhile
        os.replace(tmp, final)  # onto a new name, or an empty folder
        held.release()
    except OSError as exc:
        held.remove()
        raise CatteryError(f"{out_dir}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        held.remove()
        raise
    finally:
        g.close()
    return out_dir


def unpack_tokenizer(src_gguf: Path, out_dir: Path) -> Path:
    """Only the tokenizer of `src_gguf` (tokenizer.json or tokenizer.model, with tokenizer_config.json
    and its chat template) into `out_dir`: what a model's hub repo offers as its tokenizer, without
    writing gigabytes of weights. Returns `out_dir`."""
    src_gguf, out_dir = Path(src_gguf), Path(out_dir)
    g = GGUFFile.open(src_gguf)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_tokenizer(g, src_gguf, out_dir, _config(g, src_gguf))
    except OSError as exc:
        raise CatteryError(f"{out_dir}: cannot write: {exc.strerror or exc}") from None
    finally:
        g.close()
    return out_dir


def _check_output(out_dir: Path) -> None:
    """The output folder is new, or an empty folder: an unpack never mixes its files with others'."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise CatteryError(f"{out_dir}: exists and is not a folder; unpack into a new or empty folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        what = "already holds a checkpoint" if any(out_dir.glob("*.safetensors")) else "is not empty"
        raise CatteryError(f"{out_dir}: {what}; unpack into a new or empty folder")


def _short_float(x: float) -> float:
    """A float32 metadata value as the shortest decimal that reads back as the same float32 (1e-05, not 9.99…e-06)."""
    return float(repr(np.float32(x)).removeprefix("np.float32(").removesuffix(")"))


def _check_head_rows(src: Path, infos: dict[str, Any], n_head: int, n_kv: int) -> None:
    """Q and K rows are regrouped by head: their count must split into the heads the metadata claims."""
    for name, info in infos.items():
        heads = n_head if name.endswith(("q_proj.weight", "q_proj.bias")) else n_kv
        if name.endswith(("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")):
            rows = info.shape[-1] if info.shape else 1
            if rows % (2 * heads):
                raise CatteryError(f"{src}: tensor {name} has {rows} rows, which do not split into {heads} heads")


def _config(g: GGUFFile, src: Path) -> dict[str, Any]:
    def need(key: str, lo: int = 1, hi: int = MAX_WIDTH) -> int:
        value = g.integer(f"llama.{key}", lo=lo, hi=hi)
        if value is None:
            raise CatteryError(f"{src}: no llama.{key} in its metadata")
        return value

    n_embd, n_head = need("embedding_length"), need("attention.head_count", hi=MAX_HEADS)
    n_kv = g.integer("llama.attention.head_count_kv", n_head, lo=1, hi=MAX_HEADS) or n_head
    head_dim = g.integer("llama.attention.key_length", n_embd // n_head, lo=1, hi=MAX_HEAD_DIM) or 1
    tokens = g.fields.strings("tokenizer.ggml.tokens")
    vocab_size = g.integer("llama.vocab_size", len(tokens) if tokens else 0)
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": n_embd,
        "intermediate_size": need("feed_forward_length"),
        "num_hidden_layers": need("block_count", hi=LLAMA_MAX_LAYERS),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": g.integer("llama.context_length", 2048, lo=1),
        "rms_norm_eps": _short_float(g.number("llama.attention.layer_norm_rms_epsilon", 1e-5, lo=0.0, hi=1.0) or 0.0),
        "rope_theta": _short_float(
            g.number("llama.rope.freq_base", 10000.0, lo=MIN_ROPE_BASE, hi=MAX_ROPE_BASE) or 1.0
        ),
        "vocab_size": vocab_size,
        "tie_word_embeddings": False,
        "attention_bias": any(t.name.endswith("attn_q.bias") for t in g.tensors),
        "mlp_bias": False,
    }
    rope_dim = g.integer("llama.rope.dimension_count", hi=MAX_HEAD_DIM)
    if rope_dim is not None and rope_dim != head_dim:
        raise CatteryError(f"{src}: partial RoPE ({rope_dim} of {head_dim} dimensions) has no llama equivalent")
    scaling = _rope_scaling(g, src, config)
    if scaling:
        config["rope_scaling"] = scaling
    # SpecialVocab falls back to these ids for special tokens that are not added tokens
    for kind, token_id in _special_ids(g, src, len(tokens) if tokens else 0).items():
        config[f"{kind}_token_id"] = token_id
    return config


def _special_ids(g: GGUFFile, src: Path, n_tokens: int) -> dict[str, int]:
    """The special tokens' ids, each one a token of the vocabulary (or one line saying it is not)."""
    out: dict[str, int] = {}
    for kind in SPECIAL_KINDS:
        key = _GGUF_SPECIAL_KEYS[kind]
        token_id = g.integer(key, lo=-(1 << 63), hi=(1 << 64) - 1)
        if token_id is None:
            continue
        if not 0 <= token_id < n_tokens:
            raise CatteryError(f"{src}: {key} is {token_id:,}, not a token of the {n_tokens:,} in the vocabulary")
        out[kind] = token_id
    return out


def _rope_scaling(g: GGUFFile, src: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    kind = g.text("llama.rope.scaling.type")
    factor = g.number("llama.rope.scaling.factor", lo=0.0, hi=MAX_ROPE_FACTOR)
    if kind == "linear" and factor:
        return {"type": "linear", "rope_type": "linear", "factor": _short_float(factor)}
    if kind == "yarn" and factor:
        out: dict[str, Any] = {"type": "yarn", "rope_type": "yarn", "factor": _short_float(factor)}
        orig = g.integer("llama.rope.scaling.original_context_length", lo=1)
        if orig is not None:
            out["original_max_position_embeddings"] = orig
        for key, name in (
            ("yarn_ext_factor", "extrapolation_factor"),
            ("yarn_attn_factor", "attention_factor"),
            ("yarn_beta_fast", "beta_fast"),
            ("yarn_beta_slow", "beta_slow"),
        ):
            value = g.number(f"llama.rope.scaling.{key}", lo=-1e6, hi=1e6)
            if value is not None:
                out[name] = _short_float(value)
        return out
    if kind not in (None, "none"):
        raise CatteryError(f"{src}: RoPE scaling {quoted(kind)} cannot be written as a Hugging Face config")
    freqs = next((t for t in g.tensors if t.name == "rope_freqs.weight"), None)
    if freqs is not None:
        return _llama3_scaling(g.f32(freqs), config["head_dim"], config["rope_theta"], src)
    return None


def _llama3_scaling(factors: np.ndarray, dim: int, base: float, src: Path) -> dict[str, Any]:
    """Llama 3.1's rope_scaling parameters from the per-frequency factors the GGUF stores.

    The factors are 1 for short wavelengths, `factor` for long ones and a smooth
    blend between; the blend fixes the two band edges (low/high_freq_factor for the
    original context of 8192 that Llama 3.1 uses), found from two blended entries.
    """
    factors = factors.astype(np.float64).ravel()
    if len(factors) != dim // 2 or not np.isfinite(factors).all() or (factors <= 0).any():
        raise CatteryError(
            f"{src}: rope_freqs.weight should hold {dim // 2} positive finite factors (one per frequency)"
        )
    factor = float(factors.max())
    out = {
        "rope_type": "llama3",
        "factor": _short_float(factor),
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    if factor <= 1.0:
        raise CatteryError(f"{src}: a rope_freqs tensor that scales nothing cannot be written as llama3 scaling")
    inv_wavelen = 1.0 / (2 * math.pi / (1.0 / base ** (np.arange(0, dim, 2) / dim)))
    mid = [(w, (1.0 / f - 1.0 / factor) / (1.0 - 1.0 / factor)) for w, f in zip(inv_wavelen, factors, strict=True)]
    mid = [(w, s) for w, s in mid if 1e-4 < s < 1 - 1e-4]
    if len(mid) >= 2:
        (w0, s0), (w1, s1) = mid[0], mid[-1]
        slope = (s1 - s0) / (w1 - w0)  # s = slope·(1/λ) + offset, with s = 0 at 1/λ = low/old
        offset = s0 - slope * w0
        old = 8192
        out["low_freq_factor"] = _short_float(-offset / slope * old)
        out["high_freq_factor"] = _short_float((1 - offset) / slope * old)
    return out


def _write_generation_config(g: GGUFFile, out_dir: Path, config: dict[str, Any]) -> None:
    gen: dict[str, Any] = {"_from_model_config": True}
    for kind in ("bos", "eos", "pad"):
        if f"{kind}_token_id" in config:  # checked against the vocabulary by _config
            gen[f"{kind}_token_id"] = config[f"{kind}_token_id"]
    for key, name in (("sampling.temp", "temperature"), ("sampling.top_k", "top_k"), ("sampling.top_p", "top_p")):
        if name == "top_k":
            value: Any = g.integer(f"general.{key}")
        else:
            value = g.number(f"general.{key}", lo=0.0, hi=1e6)
            value = None if value is None else _short_float(value)
        if value is not None:
            gen[name] = value
    write_text_atomic(out_dir / "generation_config.json", json.dumps(gen, indent=2) + "\n")


def _names(g: GGUFFile, key: str) -> list[str] | None:
    """A descriptive list (languages, tags): left out, rather than refused, when it is not strings."""
    return g.strings(key) if g.header.types.get(key) == (ARRAY, STRING) else None


def _write_model_card(g: GGUFFile, out_dir: Path, folder_name: str) -> None:
    """README.md with the GGUF's general.* names as front matter, where converters look for them."""
    import yaml

    card: dict[str, Any] = {}
    for key in ("name", "author", "version", "organization", "finetune", "basename", "size_label", "license"):
        value = g.text(f"general.{key}", required_type=False)
        if value:
            card[key] = value
    languages = _names(g, "general.languages")
    if languages:
        card["language"] = languages
    tags = _names(g, "general.tags")
    if tags:
        card["tags"] = tags
    front = yaml.safe_dump(card, allow_unicode=True, sort_keys=False) if card else ""
    title = card.get("name", folder_name)
    text = f"---\n{front}---\n\n# {title}\n\nUnpacked from a GGUF file by `cattery unpack`.\n"
    write_text_atomic(out_dir / "README.md", text)


# -- tokenizer -------------------------------------------------------------------------------


def _write_tokenizer(g: GGUFFile, src: Path, out_dir: Path, config: dict[str, Any]) -> None:
    model = g.text("tokenizer.ggml.model")
    tokens: list[str] = g.strings("tokenizer.ggml.tokens") or []
    if not tokens:
        raise CatteryError(f"{src}: no vocabulary in the file (tokenizer.ggml.tokens)")
    types: list[int] = _per_token(g, src, "tokenizer.ggml.token_type", {INT32}, len(tokens)) or [NORMAL] * len(tokens)
    special = _special_ids(g, src, len(tokens))
    tok_config: dict[str, Any] = {}
    for kind in ("bos", "eos"):
        flag = g.flag(f"tokenizer.ggml.add_{kind}_token")
        if flag is not None:
            tok_config[f"add_{kind}_token"] = flag
    prefix = g.flag("tokenizer.ggml.add_space_prefix")
    if prefix is not None:
        tok_config["add_prefix_space"] = prefix
    if model == "gpt2":
        _write_bpe(g, src, out_dir, tokens, types, special)
        added = [i for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED)]
        tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    elif model == "llama":
        scores: list[float] = _per_token(g, src, "tokenizer.ggml.scores", {FLOAT32}, len(tokens)) or [0.0] * len(tokens)
        _write_sentencepiece(g, out_dir, tokens, types, scores, special)
        # llama.cpp's converter gives the tokens it found in added_tokens_decoder a score of -1000
        added = [
            i for i, t in enumerate(types) if t == USER_DEFINED or (t in (CONTROL, UNKNOWN) and scores[i] == -1000.0)
        ]
        tok_config["tokenizer_class"] = "LlamaTokenizer"
    else:
        raise CatteryError(f"{src}: tokenizer {quoted(str(model))} cannot be unpacked (SentencePiece and BPE can)")
    tok_config["added_tokens_decoder"] = {
        str(i): {
            "content": tokens[i],
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": types[i] != USER_DEFINED,
        }
        for i in added
    }
    for kind, token_id in special.items():
        tok_config[f"{kind}_token"] = tokens[token_id]
    tok_config["clean_up_tokenization_spaces"] = False
    tok_config["model_max_length"] = config["max_position_embeddings"]
    template = g.text("tokenizer.chat_template", required_type=False)
    if template:
        tok_config["chat_template"] = template
    write_text_atomic(out_dir / "tokenizer_config.json", json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
    special_map = {f"{kind}_token": tokens[token_id] for kind, token_id in special.items()}
    write_text_atomic(out_dir / "special_tokens_map.json", json.dumps(special_map, indent=2, ensure_ascii=False) + "\n")


def _per_token(g: GGUFFile, src: Path, key: str, item_types: set[int], n_tokens: int) -> list[Any] | None:
    """A per-token array (types, scores): of the type llama.cpp reads, one entry per token."""
    kind = "i32 integers" if item_types == {INT32} else "f32 numbers"
    values = g.numbers(key, item_types, f"an array of {kind}")
    if values is not None and len(values) != n_tokens:
        raise CatteryError(f"{src}: {key} has {len(values):,} entries for a vocabulary of {n_tokens:,} tokens")
    if values is not None and item_types == {FLOAT32} and not all(math.isfinite(v) for v in values):
        raise CatteryError(f"{src}: {key} holds a number that is not finite")
    return values


def _write_bpe(
    g: GGUFFile, src: Path, out_dir: Path, tokens: list[str], types: list[int], special: dict[str, int]
) -> None:
    from converters.gguf_tokenizer import pre_tokenizers

    pre_name = g.text("tokenizer.ggml.pre", "default") or "default"
    pre = pre_tokenizers().get(pre_name)
    if pre is None or pre.tokenizer_json is None:
        known = [e.name for e in pre_tokenizers().entries if e.tokenizer_json is not None]
        raise CatteryError(
            f"{src}: BPE pre-tokenizer {quoted(pre_name)} cannot be rebuilt as tokenizer.json "
            f"(known: {', '.join(known)})"
        )
    merges = g.strings("tokenizer.ggml.merges") or []
    vocab = {t: i for i, t in enumerate(tokens) if not (types[i] == UNUSED and t == f"[PAD{i}]")}
    added = [
        {
            "id": i,
            "content": tokens[i],
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": types[i] == CONTROL,
        }
        for i, t in enumerate(types)
        if t in (CONTROL, USER_DEFINED)
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    post: dict[str, Any] = byte_level
    add_bos = g.flag("tokenizer.ggml.add_bos_token")
    if add_bos and "bos" in special:
        bos = tokens[special["bos"]]
        post = {
            "type": "Sequence",
            "processors": [
                byte_level,
                {
                    "type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [
                        {"SpecialToken": {"id": bos, "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": bos, "type_id": 1}},
                        {"Sequence": {"id": "B", "type_id": 1}},
                    ],
                    "special_tokens": {bos: {"id": bos, "ids": [special["bos"]], "tokens": [bos]}},
                },
            ],
        }
    data = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre.tokenizer_json,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": pre.ignore_merges,
            "vocab": vocab,
            "merges": [m.split(" ", 1) for m in merges],
        },
    }
    write_text_atomic(out_dir / "tokenizer.json", json.dumps(data, ensure_ascii=False))


def _write_sentencepiece(
    g: GGUFFile, out_dir: Path, tokens: list[str], types: list[int], scores: list[float], special: dict[str, int]
) -> None:
    """tokenizer.model: SentencePiece's ModelProto, encoded by hand (protobuf is not a dependency).

    A BPE model with identity normalization, as Llama's tokenizer.model is; llama.cpp's
    SentencePiece tokenizer does no other normalization either.
    """
    from app.atomic import write_bytes_atomic

    kinds = list(types)
    unk = special.get("unk", next((i for i, t in enumerate(kinds) if t == UNKNOWN), 0))
    kinds = [CONTROL if t == UNKNOWN else t for t in kinds]
    kinds[unk] = UNKNOWN  # SentencePiece needs exactly one unknown piece
    pieces = b"".join(
        _field(1, _field(1, text.encode("utf-8")) + _float_field(2, score) + _varint_field(3, kind))
        for text, score, kind in zip(tokens, scores, kinds, strict=True)
    )
    trainer = (
        _varint_field(3, 2)  # model_type BPE
        + _varint_field(4, len(tokens))
        + _varint_field(35, int(BYTE in kinds))  # byte_fallback
        + _varint_field(40, unk)
        + _varint_field(41, special.get("bos", -1))
        + _varint_field(42, special.get("eos", -1))
        + _varint_field(43, special.get("pad", -1))
        + _field(45, tokens[unk].encode("utf-8"))
    )
    for number, kind in ((46, "bos"), (47, "eos"), (48, "pad")):
        if kind in special:
            trainer += _field(number, tokens[special[kind]].encode("utf-8"))
    add_prefix = g.flag("tokenizer.ggml.add_space_prefix", True)
    normalizer = (
        _field(1, b"identity")
        + _varint_field(3, int(bool(add_prefix)))
        + _varint_field(4, 0)  # remove_extra_whitespaces
        + _varint_field(5, 1)  # escape_whitespaces
    )
    proto = pieces + _field(2, trainer) + _field(3, normalizer)
    write_bytes_atomic(out_dir / "tokenizer.model", proto)


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # protobuf writes negative int32 as ten-byte varints
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _float_field(number: int, value: float) -> bytes:
    import struct

    return _varint(number << 3 | 5) + struct.pack("<f", value)
