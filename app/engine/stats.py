"""What the engine reports about a load and about each generation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class GenerationStats:
    prompt_tokens: int = 0  # tokens in the prompt
    prompt_evaluated: int = 0  # of those, evaluated now
    prompt_reused: int = 0  # of those, taken from the KV cache
    prompt_shifted: int = 0  # of the reused, moved left in the cache past evicted turns
    shift_removed: int = 0  # cache tokens of evicted turns dropped by that shift
    generated_tokens: int = 0
    time_to_first_token: float = 0.0  # seconds from the start of the job to the first token
    prompt_seconds: float = 0.0
    decode_seconds: float = 0.0  # from the first token sampled to the last
    decode_steps: int = 0  # llama_decode calls in that time, one token each
    finish_reason: str = ""  # stop, stop_string, length, context_full, cancelled
    stop_string: str | None = None
    seed: int | None = None

    @property
    def decode_tokens_per_second(self) -> float:
        if self.decode_steps > 0 and self.decode_seconds > 0:
            return self.decode_steps / self.decode_seconds
        return 0.0

    @property
    def prompt_tokens_per_second(self) -> float:
        if self.prompt_evaluated and self.prompt_seconds > 0:
            return self.prompt_evaluated / self.prompt_seconds
        return 0.0

    def summary(self) -> str:
        return (
            f"prompt {self.prompt_tokens} tok ({self.prompt_evaluated} evaluated, "
            f"{self.prompt_reused} reused"
            + (f", {self.prompt_shifted} shifted" if self.prompt_shifted else "")
            + f"), first token {self.time_to_first_token * 1000:.0f} ms, "
            f"{self.generated_tokens} tok at {self.decode_tokens_per_second:.1f} tok/s, "
            f"{self.finish_reason}" + (f", seed {self.seed}" if self.seed is not None else "")
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["decode_tokens_per_second"] = self.decode_tokens_per_second
        out["prompt_tokens_per_second"] = self.prompt_tokens_per_second
        return out


@dataclass
class LoadReport:
    path: Path
    n_ctx: int
    n_ctx_train: int
    n_layers: int
    gpu_layers: int  # layers offloaded, as llama.cpp reports them
    offload_supported: bool
    threads: int
    threads_batch: int
    batch: int
    flash_attn: str
    cache_type_k: str
    cache_type_v: str
    rope_freq_base: float | None
    rope_scale: float | None
    load_seconds: float
    warnings: list[str] = field(default_factory=list)
    vram_free: int | None = None  # the free VRAM `--gpu-layers auto` chose by; None when not auto

    @property
    def placement(self) -> str:
        """Where the layers run, in the words the status bar and CLI use, and why when auto chose."""
        auto = f"auto: {self.vram_free / 1024**3:.1f} GiB free" if self.vram_free is not None else ""
        if self.gpu_layers <= 0:
            if not self.offload_supported:
                return "CPU (this llama.cpp build has no GPU offload)"
            return f"CPU ({auto}, not one layer fits)" if auto else "CPU"
        return f"GPU {self.gpu_layers}/{self.n_layers + 1} layers" + (f" ({auto})" if auto else "")
