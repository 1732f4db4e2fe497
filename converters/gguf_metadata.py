"""A llama checkpoint's config.json as GGUF model metadata, as llama.cpp's converter writes it.

llama.cpp's converter reads the config through transformers' `AutoConfig`, which fills
in what config.json leaves out (rope_theta 10000, the KV heads equal to the heads,
head_dim = hidden / heads, …); `hparams` fills in the same defaults so the GGUF says
the same thing. Keys are written in the converter's order: general metadata, then the
model's sizes, RoPE, norms and file type, then the vocabulary.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from converters.config_check import check_hparams, check_types, rope_table
from converters.errors import CheckpointError

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "LLaMAForCausalLM")

# transformers' LlamaConfig / MistralConfig defaults for the fields the converter reads.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
    "mistral": {
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 4096 * 32,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
}
_CONTEXT_KEYS = ("max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length")


def hparams(config: dict[str, Any], where: str) -> dict[str, Any]:
    """config.json with AutoConfig's defaults filled in, and `rope` (type, theta, parameters) made explicit.

    Every field is typed and bounded first (converters/config_check.py): the values go into
    fixed-width GGUF fields, divisions and allocations.
    """
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: config.json should be a JSON object")
    check_types(config, where)
    archs = config.get("architectures") or []
    arch = archs[0] if archs else None
    model_type = config.get("model_type")
    if arch not in ARCHITECTURES and not (arch is None and model_type in ("llama", "mistral")):
        raise CheckpointError(
            f"{where}: a {arch or model_type or 'model of unknown architecture'} checkpoint; "
            f"only llama-family models ({', '.join(ARCHITECTURES[:2])}) can be converted"
        )
    family = "mistral" if (arch == "MistralForCausalLM" or model_type == "mistral") else "llama"
    hp = {**_DEFAULTS[family], **{k: v for k, v in config.items() if v is not None}}
    if "text_config" in config:
        raise CheckpointError(f"{where}: a multimodal checkpoint (text_config); only text models can be converted")
    hp.setdefault("num_key_value_heads", hp["num_attention_heads"])
    rope = rope_table(hp, where)
    if "rope_type" not in rope and "type" in rope:
        rope["rope_type"] = rope["type"]
    if "rope_theta" not in rope:
        rope["rope_theta"] = hp["rope_theta"]
    hp["rope"] = rope
    for key in _CONTEXT_KEYS:
        if key in hp:
            hp["context_length"] = hp[key]
            break
    check_hparams(hp, config, where)
    return hp


def write_params(writer: Any, hp: dict[str, Any], ftype: int) -> None:
    """The model's sizes, RoPE, norm epsilon and file type, in the converter's order."""
    import gguf

    writer.add_block_count(hp["num_hidden_layers"])
    writer.add_context_length(hp["context_length"])
    writer.add_embedding_length(hp["hidden_size"])
    writer.add_feed_forward_length(hp["intermediate_size"])
    writer.add_head_count(hp["num_attention_heads"])
    writer.add_head_count_kv(hp["num_key_value_heads"])
    rope = hp["rope"]
    rope_type = str(rope.get("rope_type") or "default").lower()
    factor = rope.get("factor")
    if rope_type == "linear" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    elif rope_type == "yarn" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(factor)
        orig = rope.get("original_max_position_embeddings")
        if orig is None:
            raise CheckpointError("config.json: yarn RoPE scaling needs original_max_position_embeddings")
        writer.add_rope_scaling_orig_ctx_len(orig)
        if (ext := rope.get("extrapolation_factor")) is not None:
            writer.add_rope_scaling_yarn_ext_factor(ext)
        if (attn := rope.get("attention_factor", rope.get("attn_factor"))) is not None:
            writer.add_rope_scaling_yarn_attn_factor(attn)
        if (fast := rope.get("beta_fast")) is not None:
            writer.add_rope_scaling_yarn_beta_fast(fast)
        if (slow := rope.get("beta_slow")) is not None:
            writer.add_rope_scaling_yarn_beta_slow(slow)
    elif rope_type not in ("default", "llama3"):
        raise CheckpointError(f"config.json: RoPE scaling {rope_type!r} is not supported (linear, yarn, llama3)")
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    writer.add_key_length(hp["head_dim"])
    writer.add_value_length(hp["head_dim"])
    writer.add_file_type(ftype)
    writer.add_vocab_size(hp["vocab_size"])
    writer.add_rope_dimension_count(hp["head_dim"])


def llama3_rope_factors(hp: dict[str, Any]) -> np.ndarray | None:
    """The `rope_freqs` tensor for Llama 3.1-style RoPE scaling, in float32 as the converter computes it.

    `original_max_position_embeddings` is read from the RoPE parameters, where
    transformers reads it (llama.cpp's converter looks for it at the top level and so
    always uses 8192, the value Llama 3.1 and 3.2 have).
    """
    rope = hp["rope"]
    if str(rope.get("rope_type") or "").lower() != "llama3":
        return None
    f32 = np.float32
    base, dim = rope["rope_theta"], hp["head_dim"]
    freqs = f32(1.0) / (f32(base) ** (np.arange(0, dim, 2, dtype=f32) / f32(dim)))
    factor = f32(rope.get("factor", 8.0))
    low, high = f32(rope.get("low_freq_factor", 1.0)), f32(rope.get("high_freq_factor", 4.0))
    old = f32(rope.get("original_max_position_embeddings", hp.get("original_max_position_embeddings", 8192)))
    low_wavelen, high_wavelen = old / low, old / high
    out = np.empty(len(freqs), dtype=f32)
    for i, freq in enumerate(freqs):
        wavelen = f32(2 * math.pi) / freq
        if wavelen < high_wavelen:
            out[i] = 1.0
        elif wavelen > low_wavelen:
            out[i] = factor
        else:
            smooth = (old / wavelen - low) / (high - low)
            out[i] = f32(1.0) / ((f32(1.0) - smooth) / factor + smooth)
    return out


def write_general(writer: Any, card_dir: Path | None, name: str | None, total_params: int) -> str:
    """general.* as the converter writes them: gguf-py's `Metadata` reads the model card (README.md front
    matter), config.json's `_name_or_path` and the folder's name. Returns the model's name."""
    import logging
    import struct

    import gguf

    from converters.card_check import check_card_folder, check_metadata

    if card_dir is not None:
        check_card_folder(card_dir)
    logging.getLogger("metadata").setLevel(logging.ERROR)
    try:
        meta = gguf.Metadata.load(None, card_dir, name, total_params)
        if meta.name is None:
            meta.name = card_dir.name if card_dir is not None else "model"
        if meta.size_label is None and total_params > 0:
            meta.size_label = gguf.size_label(total_params, total_params, 0, 0)
        check_metadata(meta, card_dir)
        writer.add_type(gguf.GGUFType.MODEL)
        meta.set_gguf_meta_model(writer)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, UnicodeError, struct.error) as exc:
        raise CheckpointError(
            f"{card_dir}: the model card (README.md) or generation_config.json holds a value llama.cpp's "
            f"metadata cannot take ({type(exc).__name__}: {str(exc)[:80]})"
        ) from None
    return str(meta.name)
