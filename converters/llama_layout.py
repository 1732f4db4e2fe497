"""The llama tensor layout, written out once: each module's Hugging Face name, its GGUF name,
its parameters and its shape in config.json's terms.

Conversion, unpacking, merging (state-dict order), the completeness check of a checkpoint
and the shape check against config.json all read this table, so that a module added or
renamed is one row here. The order of `LAYER` is the order `LlamaForCausalLM` creates its
modules in (attention q, k, v, o; MLP gate, up, down; the two norms), which is the order of
its state dict. The GGUF names are gguf-py's (the tests hold the two maps together).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Module:
    """One llama module: `hf` within the model (or within a layer), `gguf` within the file (or a block)."""

    hf: str
    gguf: str
    shape: tuple[str, ...]  # the weight's dimensions, named as in `dimensions`
    params: tuple[str, ...] = ("weight",)  # nn.Linear registers its weight before its bias
    required: bool = True  # False: the model works without it (biases; lm_head when tied)

    def names(self) -> tuple[str, ...]:
        return tuple(f"{self.hf}.{p}" for p in self.params)

    def shapes(self) -> dict[str, tuple[str, ...]]:
        """Each parameter's shape: the weight's, and a bias as long as the weight's rows."""
        return {f"{self.hf}.{p}": self.shape if p == "weight" else self.shape[:1] for p in self.params}


_BIASED = ("weight", "bias")  # attention projections of some llama-likes (Qwen, InternLM) carry biases

GLOBAL = (
    Module("model.embed_tokens", "token_embd", ("vocab", "hidden")),
    Module("model.norm", "output_norm", ("hidden",)),
    Module("lm_head", "output", ("vocab", "hidden"), required=False),
)
LAYER = (
    Module("self_attn.q_proj", "attn_q", ("q", "hidden"), _BIASED),
    Module("self_attn.k_proj", "attn_k", ("kv", "hidden"), _BIASED),
    Module("self_attn.v_proj", "attn_v", ("kv", "hidden"), _BIASED),
    Module("self_attn.o_proj", "attn_output", ("hidden", "q"), _BIASED),
    Module("mlp.gate_proj", "ffn_gate", ("ffn", "hidden")),
    Module("mlp.up_proj", "ffn_up", ("ffn", "hidden")),
    Module("mlp.down_proj", "ffn_down", ("hidden", "ffn")),
    Module("input_layernorm", "attn_norm", ("hidden",)),
    Module("post_attention_layernorm", "ffn_norm", ("hidden",)),
)

EMBEDDING = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"
LAYER_MODULES = tuple(m.hf for m in LAYER)
HF_GLOBAL = tuple(name for m in GLOBAL for name in m.names())
HF_LAYER = tuple(name for m in LAYER for name in m.names())


def dimensions(hp: dict[str, int]) -> dict[str, tuple[int, str]]:
    """Each named dimension's size from config.json's hyperparameters, with the key(s) it comes from."""
    return {
        "hidden": (hp["hidden_size"], "hidden_size"),
        "vocab": (hp["vocab_size"], "vocab_size"),
        "q": (hp["num_attention_heads"] * hp["head_dim"], "num_attention_heads × head_dim"),
        "kv": (hp["num_key_value_heads"] * hp["head_dim"], "num_key_value_heads × head_dim"),
        "ffn": (hp["intermediate_size"], "intermediate_size"),
    }


def required_gguf(n_layers: int) -> list[str]:
    """The GGUF tensors llama.cpp cannot load a llama without, in the table's order."""
    need = [f"{m.gguf}.weight" for m in GLOBAL if m.required]
    for i in range(n_layers):
        need += [f"blk.{i}.{m.gguf}.weight" for m in LAYER if m.required]
    return need
