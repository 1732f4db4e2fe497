"""What a chat needs of an engine, written down once: the local llama.cpp engine (`Engine`) and a
remote inference server (`RemoteEngine`) both provide it, and the chat core, the prompt builder and
the KV keeper use nothing else. A third engine implements this and nothing in `session/` changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from app.engine.engine import Generation
    from app.engine.metadata import ModelInfo
    from app.engine.options import SamplerSettings
    from app.engine.reuse import ReusePlan
    from app.engine.snapshot import SnapshotKey


class ChatEngine(Protocol):
    info: ModelInfo | None  # the GGUF's metadata (template, special tokens); None for a server
    report: Any  # LoadReport, or RemoteReport (`remote` True): where the model runs, its context

    @property
    def loaded(self) -> bool: ...
    @property
    def n_ctx(self) -> int: ...
    @property
    def bos_token(self) -> int: ...
    @property
    def add_bos(self) -> bool: ...

    def tokenize(self, text: str, *, add_bos: bool | None = None) -> list[int]: ...
    def segment_tokenize(self, text: str) -> list[int]: ...
    def detokenize(self, tokens: Sequence[int]) -> str: ...
    def cached_tokens(self) -> list[int]: ...
    def plan(self, prompt: str | Sequence[int]) -> ReusePlan: ...
    def generate(
        self,
        prompt: str | Sequence[int],
        sampler: SamplerSettings | None = None,
        stop: Sequence[str] = (),
        *,
        stream_interval: float = ...,
        allow_shift: bool = True,
        owner: object = None,
        text: str | None = None,
    ) -> Generation: ...
    def cancel(self) -> None: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...
    # KV snapshots (issue 18): None and no-ops where the engine does not own its cache.
    def snapshot_key(self) -> SnapshotKey | None: ...
    def kv_owner(self) -> object: ...
    def kv_serial(self) -> int: ...
