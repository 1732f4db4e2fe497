"""Where a model's layers run: the one resolution of `--gpu-layers auto|all|N` for every loader.

The chat engine, `cattery eval` and the benches all load models; each used to turn the
option into llama.cpp's `n_gpu_layers` on its own (eval not at all: llama.cpp's default),
so the same flag meant different placements. Resolving it here keeps them in agreement.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.engine.metadata import ModelInfo
from app.engine.options import LoadOptions
from app.engine.preflight import most_gpu_layers

NO_OFFLOAD_WARNING = (
    "this llama.cpp build has no GPU offload; running on the CPU "
    "(see the README to build llama-cpp-python with CUDA or Metal)"
)
UNKNOWN_VRAM_WARNING = "the GPU's free memory could not be read; offloading every layer (--gpu-layers N to choose)"


@dataclass(frozen=True)
class LayerChoice:
    """`gpu_layers` as llama.cpp's n_gpu_layers (-1: every layer), and how it was chosen."""

    gpu_layers: int
    auto: bool = False
    vram_free: int | None = None  # the free VRAM `auto` decided on, when it asked the device
    warnings: list[str] = field(default_factory=list)

    def layers_on_gpu(self, n_layers: int) -> int:
        """Layers on the GPU counting the output layer, as llama.cpp's "offloaded i/n" does."""
        return n_layers + 1 if self.gpu_layers < 0 else min(self.gpu_layers, n_layers + 1)


def free_vram() -> int | None:
    """Free bytes on the roomiest GPU llama.cpp can use, as the Hub's verdict sees it; None when
    ggml lists no GPU at all (a build that offloads but whose devices cannot be read).

    Only the roomiest counts: a split over several GPUs is llama.cpp's own choice, and
    counting one card is the side that never overfills it.
    """
    from app.engine import native

    gpus = native.gpu_devices()
    return max(free for _, free, _ in gpus) if gpus else None


def choose_gpu_layers(info: ModelInfo, n_ctx: int, options: LoadOptions, *, offload: bool) -> LayerChoice:
    """The layers to offload for `options.gpu_layers` (None = auto) on a build with or without offload.

    `auto` asks the device for its free VRAM and offloads the most layers whose weights,
    KV cache and compute buffer fit there (the Hub's fit arithmetic), rather than every
    layer: a model larger than the card then runs split instead of failing to load.
    """
    n_layers = info.block_count or 0
    if options.gpu_layers is None:
        if not offload:
            return LayerChoice(0, auto=True)
        vram = free_vram()
        if vram is None:  # nothing to decide on: llama.cpp offloads what it can, as before `auto` counted
            return LayerChoice(-1, auto=True, warnings=[UNKNOWN_VRAM_WARNING])
        on_gpu = most_gpu_layers(info, n_ctx, options, vram_free=vram)
        return LayerChoice(-1 if n_layers and on_gpu >= n_layers + 1 else on_gpu, auto=True, vram_free=vram)
    gpu_layers = min(options.gpu_layers, n_layers + 1) if n_layers else options.gpu_layers
    if gpu_layers > 0 and not offload:
        return LayerChoice(0, warnings=[NO_OFFLOAD_WARNING])
    return LayerChoice(gpu_layers)
