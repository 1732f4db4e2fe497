"""Checks made before llama.cpp loads a model: context size and memory.

llama.cpp would find out too, but later and worse: a model larger than RAM pages
the machine to a halt instead of failing, and a context beyond the trained length
loads fine and then writes nonsense.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.engine.metadata import ModelInfo
from app.engine.options import LoadOptions, round_ctx
from app.errors import NotEnoughMemoryError

GiB = 1024**3
DEFAULT_CTX = 4096
VRAM_RESERVE = 512 * 1024**2  # left free on a GPU for the driver and the display


def kv_bytes_per_element(cache_type: str) -> float:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[cache_type.upper()]]
    return size / block


def kv_cache_bytes(info: ModelInfo, n_ctx: int, type_k: str = "f16", type_v: str = "f16") -> int:
    layers = info.block_count or 0
    kv_heads = info.head_count_kv or info.head_count or 0
    k = (info.head_dim_k or 0) * kv_heads * kv_bytes_per_element(type_k)
    v = (info.head_dim_v or 0) * kv_heads * kv_bytes_per_element(type_v)
    return int(n_ctx * layers * (k + v))


def trained_context_limit(info: ModelInfo, rope_scale: float | None) -> int | None:
    """The longest context the model handles at this RoPE scale.

    `context_length` already includes any scaling written in the file; a user's
    `--rope-scale` replaces the file's factor, so the limit moves by their ratio.
    """
    if not info.context_length:
        return None
    if rope_scale is None:
        return info.context_length
    file_factor = info.rope_scaling_factor if info.rope_scaling_type == "linear" else None
    limit = info.context_length * rope_scale / (file_factor or 1.0)
    return int(limit) if math.isfinite(limit) else None


def choose_ctx(info: ModelInfo, options: LoadOptions, default: int = DEFAULT_CTX) -> int:
    """An explicit --ctx is taken as asked; the default is capped to what the model was trained for."""
    if options.ctx:
        return round_ctx(options.ctx)
    limit = trained_context_limit(info, options.rope_scale)
    wanted = min(default, limit) if limit else default
    return round_ctx(wanted)


def context_warnings(info: ModelInfo, n_ctx: int, options: LoadOptions) -> list[str]:
    limit = trained_context_limit(info, options.rope_scale)
    if limit is None or n_ctx <= limit or options.rope_freq_base is not None:
        return []
    base = info.context_length or limit
    factor = n_ctx / base
    return [
        f"context {n_ctx} is longer than {info.path.name} was trained for ({limit}); "
        f"replies will degrade past {limit} tokens. Scale RoPE to match: "
        f"--rope-scale {factor:g} (linear), or --rope-freq-base N (NTK)"
    ]


@dataclass
class MemoryEstimate:
    weights_cpu: int
    weights_gpu: int
    kv_cpu: int
    kv_gpu: int
    compute: int
    compute_gpu: int = 0  # the GPU backend's own compute buffer, there as soon as one layer is offloaded

    @property
    def ram(self) -> int:
        return self.weights_cpu + self.kv_cpu + self.compute

    @property
    def vram(self) -> int:
        return self.weights_gpu + self.kv_gpu + self.compute_gpu


def compute_buffer_bytes(info: ModelInfo, n_ctx: int, options: LoadOptions) -> int:
    """A bound on one backend's compute buffer for a batch: logits and activations, and the
    attention scores (batch × context × heads, F32) unless flash attention is forced on.

    `auto` usually turns flash attention on with a GPU, so this over-counts there by the
    scores; a layer too few on the GPU costs speed, a buffer that does not fit fails the load.
    """
    batch = min(options.batch, n_ctx) if n_ctx > 0 else options.batch
    activations = batch * ((info.vocab_size or 0) + 4 * (info.embedding_length or 0)) * 4
    scores = 0 if options.flash_attn == "on" else batch * n_ctx * (info.head_count or 0) * 4
    return activations + scores


def estimate_memory(info: ModelInfo, n_ctx: int, options: LoadOptions, gpu_layers: int) -> MemoryEstimate:
    layers = info.block_count or 1
    on_gpu = min(max(gpu_layers, 0), layers + 1)
    gpu_share = min(on_gpu / (layers + 1), 1.0)
    kv = kv_cache_bytes(info, n_ctx, options.cache_type_k, options.cache_type_v)
    kv_gpu = int(kv * min(on_gpu, layers) / layers)
    weights_gpu = int(info.tensor_bytes * gpu_share)
    compute = options.batch * ((info.vocab_size or 0) + 4 * (info.embedding_length or 0)) * 4
    return MemoryEstimate(
        weights_cpu=info.tensor_bytes - weights_gpu,
        weights_gpu=weights_gpu,
        kv_cpu=kv - kv_gpu,
        kv_gpu=kv_gpu,
        compute=compute,
        compute_gpu=compute_buffer_bytes(info, n_ctx, options) if on_gpu > 0 else 0,
    )


def most_gpu_layers(info: ModelInfo, n_ctx: int, options: LoadOptions, *, vram_free: int) -> int:
    """The most layers (the output layer counted, as llama.cpp counts them) whose weights, KV
    cache and the GPU's compute buffer fit in `vram_free` less the driver's reserve.

    The need grows with each layer, so a binary search finds the largest count that fits;
    this is both the Hub's verdict and what `--gpu-layers auto` offloads.
    """
    layers = (info.block_count or 0) + 1
    usable_vram = max(0, vram_free - VRAM_RESERVE)
    if usable_vram <= 0:
        return 0

    def fits(on_gpu: int) -> bool:
        return estimate_memory(info, n_ctx, options, on_gpu).vram <= usable_vram

    if fits(layers):
        return layers
    lo, hi = 0, layers - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def available_ram() -> int:
    from app.resources import available_memory

    return available_memory()


def check_memory(info: ModelInfo, n_ctx: int, options: LoadOptions, gpu_layers: int) -> MemoryEstimate:
    estimate = estimate_memory(info, n_ctx, options, gpu_layers)
    free = available_ram()
    if options.check_memory and estimate.ram > free:
        raise NotEnoughMemoryError(
            f"{info.path.name} needs about {estimate.ram / GiB:.1f} GiB of RAM "
            f"(weights {estimate.weights_cpu / GiB:.1f} GiB + KV cache {estimate.kv_cpu / GiB:.1f} GiB "
            f"at context {n_ctx}) but {free / GiB:.1f} GiB is available; use a smaller quant, "
            "a smaller --ctx, --gpu-layers, or --no-memory-check to try anyway"
        )
    return estimate
