"""What a user can set for loading a model and for sampling, with the checks on each value."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from app.errors import CatteryError

if TYPE_CHECKING:
    from app.settings_view import ModelPrefs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CTX_ALIGN = 256
MAX_CTX = 1 << 24  # 16M tokens: beyond every model's trained context; bounds the arithmetic on it
MAX_BATCH = 1 << 16  # llama.cpp sizes compute buffers from it
MAX_THREADS = 1024
KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
FlashAttn = Literal["auto", "on", "off"]
MAX_REPLY_TOKENS = 1 << 20  # far beyond any context; keeps a hostile value from meaning "forever"
MAX_GRAMMAR_CHARS = 1 << 20


def _number(name: str, value: Any, *, integer: bool) -> Any:
    """`value` as an int (or float), refusing text, booleans, NaN and infinities in one line.

    Settings files and presets are TOML written by people: `top_k = 40.0` is taken as 40,
    `temperature = "hot"` is refused by name rather than failing inside llama.cpp.
    """
    import math

    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CatteryError(f"{name} must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise CatteryError(f"{name} must be a finite number, got {value}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise CatteryError(f"{name} must be a whole number, got {value}")
        return int(value)
    return value


def round_ctx(n_ctx: int) -> int:
    """Round up to a multiple of 256.

    llama.cpp pads the context to 256 itself, but llama-cpp-python and Cattery size
    their buffers from the number asked for; asking for an aligned number keeps
    both sides in agreement.
    """
    return max(CTX_ALIGN, -(-n_ctx // CTX_ALIGN) * CTX_ALIGN)


def parse_gpu_layers(value: str | int | None) -> int | None:
    """`auto` (None), or a layer count; `-1` and `all` mean every layer."""
    if value is None:
        return None
    if isinstance(value, int):
        return value if value >= 0 else 10**6
    text = str(value).strip().lower()
    if text in ("auto", ""):
        return None
    if text in ("all", "max", "-1"):
        return 10**6
    try:
        n = int(text)
    except ValueError:
        raise CatteryError(f"--gpu-layers: expected auto, all or a number, got {value!r}") from None
    return n if n >= 0 else 10**6


@dataclass
class LoadOptions:
    """How to load a model. `None` means "let Cattery decide" and the report says what it chose."""

    ctx: int | None = None
    gpu_layers: int | None = None  # None = auto
    threads: int | None = None
    threads_batch: int | None = None
    batch: int = 512
    flash_attn: FlashAttn = "auto"
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    mmap: bool = True
    mlock: bool = False
    rope_freq_base: float | None = None
    rope_scale: float | None = None  # linear scale factor, e.g. 2.0 to run a 4k model at 8k
    check_memory: bool = True
    warmup: bool = True

    def validate(self) -> None:
        for name in ("ctx", "gpu_layers", "threads", "threads_batch", "batch"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _number(name, value, integer=True))
        for name in ("rope_freq_base", "rope_scale"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _number(name, value, integer=False))
        for name in ("mmap", "mlock", "check_memory", "warmup"):
            if not isinstance(getattr(self, name), bool):
                raise CatteryError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("cache_type_k", "cache_type_v", "flash_attn"):
            if not isinstance(getattr(self, name), str):
                raise CatteryError(f"{name} must be text, got {getattr(self, name)!r}")
        if self.ctx is not None and self.ctx < 0:
            raise CatteryError(f"--ctx must be positive, got {self.ctx}")
        if self.ctx is not None and self.ctx > MAX_CTX:
            raise CatteryError(f"--ctx must be at most {MAX_CTX}, got {self.ctx}")
        if not 1 <= self.batch <= MAX_BATCH:
            raise CatteryError(f"--batch must be between 1 and {MAX_BATCH}, got {self.batch}")
        for name in ("threads", "threads_batch"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= MAX_THREADS:
                raise CatteryError(f"--{name.replace('_', '-')} must be between 1 and {MAX_THREADS}, got {value}")
        for name in ("cache_type_k", "cache_type_v"):
            value = getattr(self, name).lower()
            if value not in KV_CACHE_TYPES:
                raise CatteryError(
                    f"--{name.replace('_', '-')}: unknown type {value!r} (one of {', '.join(KV_CACHE_TYPES)})"
                )
            setattr(self, name, value)
        if self.flash_attn not in ("auto", "on", "off"):
            raise CatteryError(f"--flash-attn: expected auto, on or off, got {self.flash_attn!r}")
        if self.rope_scale is not None and self.rope_scale <= 0:
            raise CatteryError(f"--rope-scale must be positive, got {self.rope_scale}")
        if self.rope_freq_base is not None and self.rope_freq_base <= 0:
            raise CatteryError(f"--rope-freq-base must be positive, got {self.rope_freq_base}")

    @classmethod
    def from_settings(cls, prefs: ModelPrefs) -> LoadOptions:
        """The settings' [model] table as load options; 0 (ctx, threads) means "let the engine choose"."""
        return cls(
            ctx=prefs.ctx or None,
            gpu_layers=parse_gpu_layers(prefs.gpu_layers),
            threads=prefs.threads or None,
            threads_batch=prefs.threads_batch or None,
            batch=prefs.batch,
            flash_attn=prefs.flash_attn,  # type: ignore[arg-type]
            cache_type_k=prefs.cache_type_k,
            cache_type_v=prefs.cache_type_v,
            mmap=prefs.mmap,
            mlock=prefs.mlock,
        )


@dataclass
class SamplerSettings:
    """The samplers users know from KoboldCpp and SillyTavern, applied in llama.cpp's order.

    temperature <= 0 means greedy. repeat_last_n = -1 means the whole context, 0 turns
    the penalties off. seed None picks a random seed, reported in the statistics so
    a reply can be reproduced.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int | None = None
    max_tokens: int = 512
    ban_eos: bool = False
    grammar: str | None = None  # GBNF, as llama.cpp and KoboldCpp take it; rule `root` starts
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def validate(self) -> None:
        """Types first (values arrive from settings files, presets and saved chats, not only argparse),
        then ranges; every problem is one line naming the sampler."""
        for f in dataclasses.fields(self):
            if f.name in ("extra", "grammar", "seed", "ban_eos"):
                continue
            setattr(self, f.name, _number(f.name, getattr(self, f.name), integer=f.type in ("int", int)))
        if self.seed is not None:
            self.seed = _number("seed", self.seed, integer=True)
        if not isinstance(self.ban_eos, bool):
            raise CatteryError(f"ban_eos must be true or false, got {self.ban_eos!r}")
        if self.grammar is not None and not isinstance(self.grammar, str):
            raise CatteryError(f"grammar must be GBNF text, got {type(self.grammar).__name__}")
        checks = [
            (self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}"),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}"),
            (0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}"),
            (0.0 < self.typical_p <= 1.0, f"typical_p must be in (0, 1], got {self.typical_p}"),
            (self.repeat_penalty > 0, f"repeat_penalty must be > 0, got {self.repeat_penalty}"),
            (self.repeat_last_n >= -1, f"repeat_last_n must be >= -1, got {self.repeat_last_n}"),
            (self.mirostat in (0, 1, 2), f"mirostat must be 0, 1 or 2, got {self.mirostat}"),
            (
                1 <= self.max_tokens <= MAX_REPLY_TOKENS,
                f"max_tokens must be in [1, {MAX_REPLY_TOKENS}], got {self.max_tokens}",
            ),
            (
                self.seed is None or 0 <= self.seed < 0xFFFFFFFF,
                f"seed must be in [0, 4294967294], got {self.seed}",
            ),
            (
                self.grammar is None or len(self.grammar) <= MAX_GRAMMAR_CHARS,
                f"grammar longer than {MAX_GRAMMAR_CHARS} characters",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise CatteryError(message)

    def updated(self, **changes: Any) -> SamplerSettings:
        known = {f.name for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if k in known})

    @classmethod
    def from_mapping(cls, values: dict[str, Any], base: SamplerSettings | None = None) -> SamplerSettings:
        base = base or cls()
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = {k: v for k, v in values.items() if k not in known}
        chosen = {k: v for k, v in values.items() if k in known}
        out = dataclasses.replace(base, **chosen)
        out.extra = {**base.extra, **unknown}
        return out


def preset_dir() -> Path:
    from app.assets import asset_path

    return asset_path("samplers")


def preset_names() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.toml"))


def load_preset(name: str) -> SamplerSettings:
    """A sampler preset from `assets/samplers/NAME.toml`, over the neutral defaults."""
    path = preset_dir() / f"{name}.toml"
    if not path.is_file():
        raise CatteryError(f"unknown sampler preset {name!r} (one of {', '.join(preset_names())})")
    with path.open("rb") as f:
        values = tomllib.load(f)
    values.pop("description", None)
    neutral = SamplerSettings(top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0, repeat_last_n=64)
    return SamplerSettings.from_mapping(values, neutral)
