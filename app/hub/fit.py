"""Will it fit? A model's memory need from its own numbers, against this machine's RAM and VRAM.

The estimate is the engine's own (`app/engine/preflight.estimate_memory`): weights from the
tensor sizes in the header, the KV cache from the layers, KV heads, head size, context and
cache type, and the compute buffers; so a verdict before a download and the check before a
load agree. With a GPU, the most layers that fit in its free memory go there, the rest in RAM.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from app.engine.metadata import ModelInfo
from app.engine.options import LoadOptions
from app.engine.preflight import VRAM_RESERVE, estimate_memory, most_gpu_layers

__all__ = ["VRAM_RESERVE", "Fit", "fit", "machine_memory", "most_gpu_layers"]

GiB = 1024**3


@dataclass(frozen=True)
class Fit:
    verdict: str  # "gpu" (every layer on the GPU), "partial", "ram", "too_large"
    gpu_layers: int
    ram_needed: int
    vram_needed: int
    ram_free: int
    vram_free: int

    @property
    def fits(self) -> bool:
        return self.verdict != "too_large"

    def text(self, n_layers: int) -> str:
        ram = f"{self.ram_needed / GiB:.1f} GiB RAM"
        if self.verdict == "gpu":
            return f"fits on the GPU ({self.vram_needed / GiB:.1f} GiB VRAM, all {n_layers + 1} layers)"
        if self.verdict == "partial":
            return f"fits with {self.gpu_layers}/{n_layers + 1} layers on the GPU (+ {ram})"
        if self.verdict == "ram":
            return f"fits in RAM ({ram} of {self.ram_free / GiB:.1f} free)"
        return f"too large: needs {ram}, {self.ram_free / GiB:.1f} GiB free"


def fit(
    info: ModelInfo,
    n_ctx: int,
    options: LoadOptions | None = None,
    *,
    ram_free: int,
    vram_free: int = 0,
    weights: int | None = None,
) -> Fit:
    """The verdict for one model at a context size. `weights` overrides the header's tensor
    bytes (a split model's first part lists only its own tensors)."""
    options = options or LoadOptions()
    if weights is not None and weights > info.tensor_bytes:
        info = dataclasses.replace(info, tensor_bytes=weights)
    layers = (info.block_count or 0) + 1

    def need(on_gpu: int) -> tuple[int, int]:
        e = estimate_memory(info, n_ctx, options, on_gpu)
        return e.ram, e.vram

    on_gpu = most_gpu_layers(info, n_ctx, options, vram_free=vram_free)
    if on_gpu == layers:
        ram, vram = need(layers)
        return Fit("gpu", layers, ram, vram, ram_free, vram_free)
    if on_gpu > 0:
        ram, vram = need(on_gpu)
        if ram <= ram_free:
            return Fit("partial", on_gpu, ram, vram, ram_free, vram_free)
    ram, _ = need(0)
    return Fit("ram" if ram <= ram_free else "too_large", 0, ram, 0, ram_free, vram_free)


def machine_memory() -> tuple[int, int]:
    """(free RAM, free VRAM of the roomiest GPU llama.cpp can use) in bytes."""
    from app.engine.placement import free_vram
    from app.engine.preflight import available_ram

    return available_ram(), free_vram() or 0
