"""Where a model's layers run: the one resolution of `--gpu-layers auto|all|N` for every loader.

The chat engine, `cattery eval` and the benches all load models; each used to turn the
option into llama.cpp's `n_gpu_layers` on its own (eval not at all: llama.cpp's default),
so the same flag meant different placements. Resolving it here keeps them in agreement.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.engine.metadata import ModelInfo
from app.engine.options import LoadOptions

NO_OFFLOAD_WARNING = (
    "this llama.cpp build has no GPU offload; running on the CPU "
    "(see the README to build llama-cpp-python with CUDA or Metal)"
)


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


def choose_gpu_layers(info: ModelInfo, n_ctx: int, options: LoadOptions, *, offload: bool) -> LayerChoice:
    """The layers to offload for `options.gpu_layers` (None = auto) on a build with or without offload."""
    n_layers = info.block_count or 0
    if options.gpu_layers is None:
        return LayerChoice(-1 if offload else 0, auto=True)
    gpu_layers = min(options.gpu_layers, n_layers + 1) if n_layers else options.gpu_layers
    if gpu_layers > 0 and not offload:
        return LayerChoice(0, warnings=[NO_OFFLOAD_WARNING])
    return LayerChoice(gpu_layers)
