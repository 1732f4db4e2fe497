"""The engines a chat can run on besides the local model: inference servers given by URL or named in
the settings (`[engines.NAME]`), how one is made, and the connection test.

The command line (`--engine`, `cattery engines test`) and the app's Models screen both come here, so
what the test says is what a chat gets. The API key is read from the environment variable the
settings name, never from a file, and never written anywhere.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import CatteryError

if TYPE_CHECKING:
    from app.engine.remote import RemoteEngine
    from app.session.workspace import Workspace


def named_engines(ws: Workspace) -> dict[str, dict[str, Any]]:
    """The settings' [engines.NAME] tables, checked (app/settings_schema.py), by name."""
    return {name: dict(e) for name, e in sorted(ws.settings.section("engines").items()) if isinstance(e, dict)}


def resolve_tokenizer(ref: str, find_gguf: Callable[[str], Path]) -> tuple[Path, str | None]:
    """The local tokenizer a ref names, and the hub repo it came from: a .gguf file or library
    name (its vocabulary), a tokenizer.json or a folder holding one, or `owner/repo`, whose
    tokenizer.json (not its weights) is fetched into the Hugging Face cache once."""
    from app.engine.hf_vocab import tokenizer_file

    path = Path(ref).expanduser()
    if path.exists():
        if path.is_dir() or path.suffix == ".json":
            return tokenizer_file(path), None
        return find_gguf(ref), None
    from app.hub.names import is_repo_id

    if not is_repo_id(ref):
        return find_gguf(ref), None  # a library name, or one line saying what is missing
    from app.hub.library import resolve_hub_name

    try:
        cached = resolve_hub_name(ref)  # a GGUF of that repo downloaded already: its vocabulary
    except CatteryError:
        cached = None
    if cached is not None:
        return cached, None
    return _hub_tokenizer(ref), ref


def _hub_tokenizer(repo: str) -> Path:
    from app.hub.cache import cached_path
    from app.hub.download import download, plan_tokenizer
    from app.hub.http import hub_errors

    cached = cached_path(repo, "tokenizer.json")
    if cached is not None:
        return cached
    with hub_errors(f"{repo}'s tokenizer"):
        plan = plan_tokenizer(repo)
        paths = download(plan)
    return next(p for p in paths if p.name == "tokenizer.json")


def remote_engine(
    ws: Workspace,
    target: str,
    *,
    model: str | None = None,
    key_env: str | None = None,
    ctx: int | None = None,
    tokenizer: str | None = None,
    find_gguf: Callable[[str], Path] | None = None,
) -> RemoteEngine:
    """A RemoteEngine (not yet connected) for a URL, or a name from the settings' [engines.NAME];
    the arguments given win over the named engine's settings. `find_gguf` resolves a tokenizer
    that names a model (the command line's resolver, which may download; the library's by default)."""
    from app.engine.remote import RemoteEngine

    url, named = target, {}
    if "://" not in target:
        engines = named_engines(ws)
        named = engines.get(target) or {}
        if not named:
            known = ", ".join(engines) or "none yet"
            raise CatteryError(
                f"no engine named {target!r} in {ws.settings.path} (named: {known}); "
                f"give a URL, or add [engines.{target}]"
            )
        url = named["url"]
    key_env = key_env or named.get("api_key_env")
    key = None
    if key_env:
        key = os.environ.get(key_env)
        if not key:
            raise CatteryError(f"the environment variable {key_env} holding the engine's API key is not set")
    ref = tokenizer or named.get("tokenizer")
    vocab_path, vocab_from = (None, None)
    if ref:
        vocab_path, vocab_from = resolve_tokenizer(ref, find_gguf or ws.pick_model)
    return RemoteEngine(
        url,
        model=model or named.get("model"),
        api_key=key,
        n_ctx=ctx or named.get("ctx"),
        tokenizer=vocab_path,
        tokenizer_from=vocab_from,
    )


@dataclass
class EngineProbe:
    """What a connection test found: what answers, with which model and context, and how fast."""

    url: str
    server: str
    model: str
    ctx: int
    ctx_from_server: bool
    build: str | None
    tokenizer: str
    template: str  # where the `gguf` format's template comes from, or "none"
    connect_seconds: float
    first_token_seconds: float | None
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        ctx_note = "" if self.ctx_from_server else " (not said by the server: from the settings or assumed)"
        first = self.first_token_seconds
        return [
            f"{self.url}: {self.server} serving {self.model}",
            f"context {self.ctx} tokens{ctx_note}; build {self.build or 'not reported'}",
            f"tokens counted by {self.tokenizer}",
            f"chat template: {self.template}",
            f"connected in {self.connect_seconds * 1000:.0f} ms; a one-token reply in {(first or 0) * 1000:.0f} ms",
            *(f"warning: {w}" for w in self.warnings),
        ]


def probe(engine: RemoteEngine) -> EngineProbe:
    """Connect as a chat would, then time a one-token completion. The engine stays connected (the
    caller closes it, or chats on it)."""
    from app.engine.options import SamplerSettings

    started = time.perf_counter()
    report = engine.connect()
    connected = time.perf_counter() - started
    tokens = engine.tokenize("Hello")
    gen = engine.generate(tokens, SamplerSettings(temperature=0.0, max_tokens=1, seed=1), text="Hello")
    gen.result()
    stats = gen.stats
    info = engine.info
    template = "none"
    if info is not None and info.chat_template:
        template = "the server's (/props)" if engine.chat_template == info.chat_template else "the local tokenizer's"
    return EngineProbe(
        url=report.url,
        server=report.kind,
        model=report.model,
        ctx=report.n_ctx,
        ctx_from_server=report.n_ctx_known,
        build=report.build,
        tokenizer=report.tokenizer,
        template=template,
        connect_seconds=round(connected, 4),
        first_token_seconds=round(stats.time_to_first_token, 4) if stats is not None else None,
        warnings=list(report.warnings),
    )
