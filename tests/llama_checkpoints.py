"""Tiny random llama checkpoints and LoRA adapters on disk, for the merge, LoRA and resource
tests: real safetensors shards in Hugging Face's layout, small enough to merge in milliseconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from converters.checkpoint import Checkpoint, ShardedWriter, TensorPlan


def llama_shapes(layers: int, hidden: int, heads: int, kv_heads: int, inter: int, vocab: int, tied: bool) -> dict:
    head_dim = hidden // heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }
    shapes["model.norm.weight"] = (hidden,)
    if not tied:
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def make_llama(
    folder: Path,
    *,
    seed: int,
    layers: int = 3,
    hidden: int = 16,
    heads: int = 4,
    kv_heads: int = 2,
    inter: int = 24,
    vocab: int = 40,
    tied: bool = False,
    dtype: str = "F32",
    max_shard: int = 6000,
    tokenizer: bool = True,
    extra: dict[str, tuple[int, ...]] | None = None,
    std: float = 1.0,
) -> dict[str, np.ndarray]:
    """A random llama checkpoint; returns its tensors as the file holds them, widened to float64.

    Q and K are 10× the rest, so that a wrong Q/K permutation downstream shows in the logits.
    """
    rng = np.random.default_rng(seed)
    shapes = llama_shapes(layers, hidden, heads, kv_heads, inter, vocab, tied) | (extra or {})
    tensors = {
        n: (rng.standard_normal(s) * std * (10 if ("q_proj" in n or "k_proj" in n) else 1)).astype(np.float32)
        for n, s in shapes.items()
    }
    names = sorted(tensors)  # as safetensors files list them
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "num_hidden_layers": layers,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 256,
        "tie_word_embeddings": tied,
        "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype],
    }
    (folder / "config.json").write_text(json.dumps(config))
    if tokenizer:
        (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
        (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}, "seed": seed}))
    with ShardedWriter(folder, [TensorPlan(n, dtype, tensors[n].shape) for n in names], max_shard=max_shard) as w:
        for n in names:
            w.write(n, tensors[n])
        w.close()
    ck = Checkpoint.open(folder)
    return {n: ck.f32(n).astype(np.float64) for n in names}


def make_adapter(
    folder: Path,
    base: dict[str, np.ndarray],
    *,
    seed: int,
    r: int = 4,
    alpha: float = 8,
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"),
    config: dict[str, Any] | None = None,
    ranks: dict[str, int] | None = None,
    embedding: bool = False,
    saved: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """A PEFT LoRA folder; `ranks` gives a module its own rank (as rank_pattern makes PEFT do)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for name, w in base.items():
        module = name.removesuffix(".weight")
        if w.ndim != 2 or module.rsplit(".", 1)[-1] not in targets:
            continue
        rank = next((k for pat, k in (ranks or {}).items() if module.endswith(pat)), r)
        tensors[f"base_model.model.{module}.lora_A.weight"] = rng.standard_normal((rank, w.shape[1])).astype(np.float32)
        tensors[f"base_model.model.{module}.lora_B.weight"] = rng.standard_normal((w.shape[0], rank)).astype(np.float32)
    if embedding:
        vocab, hidden = base["model.embed_tokens.weight"].shape
        tensors["base_model.model.model.embed_tokens.lora_embedding_A"] = rng.standard_normal((r, vocab)).astype(
            np.float32
        )
        tensors["base_model.model.model.embed_tokens.lora_embedding_B"] = rng.standard_normal((hidden, r)).astype(
            np.float32
        )
    for name, value in (saved or {}).items():
        tensors[f"base_model.model.{name}"] = value.astype(np.float32)
    folder.mkdir(parents=True)
    cfg = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": list(targets),
        "base_model_name_or_path": "base",
    } | (config or {})
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return {k: v.astype(np.float64) for k, v in tensors.items()}


def read_out(folder: Path) -> dict[str, np.ndarray]:
    ck = Checkpoint.open(folder)
    return {n: ck.f32(n).astype(np.float64) for n in ck.names()}
