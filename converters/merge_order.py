"""The order in which transformers' `LlamaForCausalLM.state_dict()` lists a llama model's tensors.

Why it has to be rebuilt: safetensors files list tensors alphabetically (`layers.10` before
`layers.2`, `k_proj` before `q_proj`), but BlockMerge_Gradient spreads its values over the
state dict, which follows the order the modules are created in: the embeddings, then each
layer in numeric order (attention q, k, v, o; MLP gate, up, down; the two norms), then the
final norm and `lm_head`. Which value a tensor gets depends on that order. Merged tensors are
written in it too, so a merged checkpoint reads like one saved by transformers.

Mistral's tensors have the same names and order. `rotary_emb.inv_freq` buffers, found in
old Llama 1 conversions, are not part of a modern state dict (transformers dropped them as
non-persistent) and llama.cpp ignores them: merges leave them out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from converters.llama_layout import EMBEDDING, FINAL_NORM, LAYER_MODULES, LM_HEAD

__all__ = ["EMBEDDING", "FINAL_NORM", "LAYER_MODULES", "LM_HEAD", "gradient_t", "module_order", "sort_key"]

PARAMETERS = ("weight", "bias")  # nn.Linear registers its weight before its bias

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def layer_of(name: str) -> int | None:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None


def is_buffer(name: str) -> bool:
    """Derived buffers that a state dict does not hold and no converter reads."""
    return name.endswith("rotary_emb.inv_freq")


def is_vocab_tensor(name: str) -> bool:
    """The tensors with a row per token, whose sizes differ when vocabularies do."""
    return name in (EMBEDDING, LM_HEAD)


def _natural(text: str) -> tuple[object, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def _within_module(rest: str, modules: tuple[str, ...]) -> tuple[object, ...]:
    module, _, param = rest.rpartition(".")
    rank = modules.index(module) if module in modules else len(modules)
    param_rank = PARAMETERS.index(param) if param in PARAMETERS else len(PARAMETERS)
    return (rank, _natural(module), param_rank, param)


def sort_key(name: str) -> tuple[object, ...]:
    m = _LAYER.match(name)
    if m:
        return (1, int(m.group(1)), *_within_module(m.group(2), LAYER_MODULES))
    if name.startswith("model.embed_tokens."):
        return (0, *_within_module(name, ("model.embed_tokens",)))
    if name.startswith("model.norm."):
        return (2, 0, *_within_module(name, ("model.norm",)))
    if name.startswith("model."):  # anything else of the inner model comes after its norm
        return (2, 1, _natural(name))
    if name.startswith("lm_head."):
        return (3, *_within_module(name, ("lm_head",)))
    return (4, _natural(name))


def module_order(names: Iterable[str]) -> list[str]:
    """The names in state-dict (module) order."""
    return sorted(names, key=sort_key)


def gradient_t(name: str, n_layers: int) -> float:
    """mergekit's position of a tensor along a gradient: layer i of n at i/(n-1), a one-layer model at 1.

    Every tensor outside the layers sits at 0, the final norm and lm_head as well as the
    embeddings: mergekit 0.1.5's planner (`plan_module` in mergekit/plan.py) reads the
    pre-weights and the post-weights through one config reader made at t = 0, so both ends of
    the model take a gradient's first value.
    """
    layer = layer_of(name)
    if layer is None:
        return 0.0
    return layer / (n_layers - 1) if n_layers > 1 else 1.0
