"""A remote inference server as Cattery's engine: the same surface the chat uses of the local
engine (tokenize, plan, generate, cancel), over HTTP.

Cattery always renders the prompt itself (its formats, the model's template, the pinned block and
the window), so the server is used for completion only, never for its chat templating. What
answers is detected once, at `connect`:

- llama-server (llama.cpp): `/props` answers. Its native `/completion` takes the prompt as token
  ids with `cache_prompt`, and says in `timings.prompt_n` how many it evaluated; `/tokenize` and
  `/detokenize` count with the served model's own vocabulary.
- vLLM: `/tokenize` answers with `max_model_len`; `/v1/completions` takes token ids.
- llama-cpp-python's server: `/extras/tokenize` answers; `/v1/completions` takes text (it adds
  the BOS token itself, as Cattery's text leaves it out).
- Anything else OpenAI-compatible: `/v1/completions` with text; the window's token counts then
  come from a local tokenizer of the served model (`tokenizer`: a GGUF, its vocabulary only, or a
  tokenizer.json, e.g. from the model's hub repo), without which the connection is refused with a
  line saying so. A local tokenizer may be named for any server.

The prompt format is Cattery's as ever; `gguf` here is the served model's own template, from the
local tokenizer (a GGUF's, or tokenizer_config.json's) or from llama-server's `/props`.

A server-side fault ends the reply with what was streamed so far and one line (`RemoteError`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.engine.engine import STREAM_INTERVAL, Generation, _End
from app.engine.options import SamplerSettings
from app.engine.remote_http import NotJSON, RemoteError, RemoteHTTP
from app.engine.reuse import ReusePlan, common_prefix
from app.engine.stats import GenerationStats
from app.errors import CatteryError

DEFAULT_REMOTE_CTX = 2048  # llama-cpp-python's server default, when a server does not say its context
KINDS = ("llama-server", "vllm", "llama-cpp-python", "openai")


@dataclass
class RemoteReport:
    """What the status bar, `/stats` and a reply's provenance say about a remote engine."""

    url: str
    kind: str  # one of KINDS
    model: str  # the server's model id
    n_ctx: int
    n_ctx_known: bool  # False: the server did not say, `n_ctx` is the setting or a default
    build: str | None = None  # the server's build, when it reports one
    tokenizer: str = ""  # which tokenizer counts the window's tokens
    warnings: list[str] = field(default_factory=list)
    path: None = None  # no local file: the chat's saved window is per model file, so none is kept
    gpu_layers: int = 0
    remote: bool = True

    @property
    def placement(self) -> str:
        return f"remote {self.kind} at {self.url}"

    @property
    def name(self) -> str:
        """The served model as the top bar shows it: a path's file name, without `.gguf`."""
        return Path(self.model).name.removesuffix(".gguf")

    def as_provenance(self) -> dict[str, Any]:
        return {
            "engine": self.url,
            "server": self.kind,
            "server_model": self.model,
            "build": self.build,
            "n_ctx": self.n_ctx,
        }


class RemoteEngine:
    """A server's model as an engine. Thread-safe: any thread may call any method; one generation
    streams at a time (a second waits for the first, as on the local engine)."""

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        n_ctx: int | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        tokenizer: Path | None = None,
        tokenizer_from: str | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {}
        if connect_timeout is not None:
            kwargs["connect_timeout"] = connect_timeout
        if read_timeout is not None:
            kwargs["read_timeout"] = read_timeout
        self.http = RemoteHTTP(url, api_key=api_key, **kwargs)
        self._model_asked = model
        self._ctx_asked = n_ctx
        self._tokenizer_path = Path(tokenizer) if tokenizer is not None else None
        self._tokenizer_from = tokenizer_from  # where a downloaded tokenizer.json came from (a hub repo)
        self._served_tokens: tuple[str | None, str | None] = (None, None)  # BOS/EOS texts the server says
        self._eos: list[int] = []  # the end-of-text ids, where a local tokenizer says them (ban_eos as a bias)
        self._vocab: Any = None  # a local GGUF's vocabulary, when one counts the tokens
        self.info: Any = None  # a local tokenizer's GGUF metadata (its template, for `gguf`); else None
        self.report: RemoteReport | None = None
        self.chat_template: str | None = None
        self._bos_prefix: list[int] = []
        self._bos = -1
        self._add_bos = False
        self._sent: list[int] = []  # the last prompt sent: what a caching server holds
        self._lock = threading.Lock()  # one generation at a time
        self._current: Generation | None = None
        self._streams: dict[int, Any] = {}

    # -- connecting ------------------------------------------------------------------

    def connect(self) -> RemoteReport:
        """Find what answers, its model and context; raises RemoteError (one line) if nothing usable does."""
        props = self._try_json("GET", "/props")
        models = self._try_json("GET", "/v1/models")
        model_ids = _model_ids(models)
        model = self._model_asked or (model_ids[0] if model_ids else "")
        if self._model_asked and model_ids and self._model_asked not in model_ids:
            raise RemoteError(
                f"the engine at {self.http.where} serves {', '.join(model_ids[:5])}, not {self._model_asked!r}",
                status=404,
            )
        warnings: list[str] = []
        build = None
        n_ctx: int | None = None
        if isinstance(props, dict) and ("default_generation_settings" in props or "build_info" in props):
            kind = "llama-server"
            settings = props.get("default_generation_settings") or {}
            n_ctx = _int(settings.get("n_ctx")) or _int(props.get("n_ctx"))
            build = str(props.get("build_info") or "")[:200] or None
            template = props.get("chat_template")
            self.chat_template = template if isinstance(template, str) and len(template) < 1 << 20 else None
            model = model or str(props.get("model_alias") or props.get("model_path") or "")
            self._served_tokens = (_short_text(props.get("bos_token")), _short_text(props.get("eos_token")))
        else:
            vllm = self._try_json("POST", "/tokenize", {"model": model, "prompt": "x", "add_special_tokens": False})
            if isinstance(vllm, dict) and isinstance(vllm.get("tokens"), list):
                kind = "vllm"
                n_ctx = _int(vllm.get("max_model_len"))
            elif isinstance(self._try_json("POST", "/extras/tokenize", {"input": "x"}), dict):
                kind = "llama-cpp-python"
            elif model_ids:
                kind = "openai"
            else:
                raise RemoteError(f"nothing at {self.http.where} speaks the OpenAI or llama.cpp completion API")
        if kind == "vllm" and n_ctx is None:
            n_ctx = _max_model_len(models, model)
        if kind == "openai" and self._tokenizer_path is None:
            raise RemoteError(
                f"the engine at {self.http.where} has no tokenizer endpoint: name the served model's GGUF, "
                "its tokenizer.json or its hub repo as its tokenizer (--engine-tokenizer, or tokenizer = in "
                "[engines.NAME])"
            )
        if self._tokenizer_path is not None:
            self._load_vocab(self._tokenizer_path, model)
            warnings.append(
                f"token counts come from {self._tokenizer_label()}: if it is not the served model's "
                "vocabulary, the window's counts are estimates"
            )
        if self.info is None or not self.info.chat_template:
            # The server's own template (llama-server's /props) is the `gguf` format: Cattery renders
            # it, the server only completes. Else the served model's name, for guessing a format.
            from app.engine.metadata import template_info

            bos, eos = self._served_tokens
            self.info = template_info(model or "remote", self.chat_template, bos, eos)
        known = n_ctx is not None
        if self._ctx_asked:
            if n_ctx is not None and self._ctx_asked > n_ctx:
                warnings.append(f"the server's context is {n_ctx} tokens, less than the {self._ctx_asked} asked for")
            else:
                n_ctx = self._ctx_asked
        if n_ctx is None:
            n_ctx = DEFAULT_REMOTE_CTX
            warnings.append(
                f"the engine at {self.http.where} does not say its context size: assuming {n_ctx} "
                "(set ctx for this engine to what the server was started with)"
            )
        self.report = RemoteReport(
            url=self.http.where,
            kind=kind,
            model=model or "?",
            n_ctx=n_ctx,
            n_ctx_known=known,
            build=build,
            tokenizer=(
                f"the local {self._tokenizer_label()}"
                if self._vocab is not None
                else f"the server's ({'/extras/tokenize' if kind == 'llama-cpp-python' else '/tokenize'})"
            ),
            warnings=warnings,
        )
        if self._vocab is None:
            self._learn_bos()
        return self.report

    def _load_vocab(self, path: Path, model: str) -> None:
        """The served model's vocabulary, counted here: a local GGUF's (no weights are read; its
        metadata, the chat template, is the engine's `info`), or a tokenizer.json (with the template
        of the tokenizer_config.json beside it)."""
        if path.suffix == ".gguf":
            from app.engine.metadata import read_model_info
            from app.engine.native import VocabModel

            self.info = read_model_info(path)
            self._vocab = VocabModel(path)
            self._eos = list(self._vocab.eog_tokens())[:16]
        else:
            from app.engine.hf_vocab import JsonVocab
            from app.engine.metadata import template_info

            vocab = JsonVocab(path)
            self._vocab = vocab
            config = vocab.config
            if config.chat_template:
                self.info = template_info(model or "remote", config.chat_template, config.bos_token, config.eos_token)
            self._eos = [vocab.eos_token] if vocab.eos_token >= 0 else []
        self._bos, self._add_bos = self._vocab.bos_token, self._vocab.add_bos

    def _tokenizer_label(self) -> str:
        """The local tokenizer as a person knows it: a GGUF's file name, a hub repo's tokenizer.json."""
        path = self._tokenizer_path
        if path is None:
            return ""
        if path.suffix == ".gguf":
            return path.name
        return f"tokenizer.json of {self._tokenizer_from or path.parent.name}"

    def _try_json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """A probe: the answer, or None when the server has no such endpoint (any 4xx) or it is not JSON."""
        try:
            if method == "GET":
                return self.http.get_json(path, timeout=self.http.connect_timeout)
            return self.http.post_json(path, body or {}, timeout=self.http.connect_timeout)
        except NotJSON:
            return None
        except RemoteError as exc:
            if 400 <= exc.status < 500 and exc.status not in (401, 403, 429):
                return None
            raise

    def _learn_bos(self) -> None:
        """The token ids a server puts before any text it tokenizes (llama-cpp-python's always adds
        the model's BOS): taken off every count, as Cattery adds BOS itself where the model wants it."""
        empty = self._raw_tokenize("")
        x = self._raw_tokenize("x")
        n = common_prefix(empty, x)
        self._bos_prefix = x[:n]
        self._bos = self._bos_prefix[0] if self._bos_prefix else -1
        self._add_bos = bool(self._bos_prefix)

    # -- the surface the chat uses ---------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self.report is not None

    @property
    def n_ctx(self) -> int:
        return self._require().n_ctx

    def _require(self) -> RemoteReport:
        if self.report is None:
            raise CatteryError("the remote engine is not connected")
        return self.report

    @property
    def bos_token(self) -> int:
        return self._bos

    @property
    def add_bos(self) -> bool:
        return self._add_bos

    def _raw_tokenize(self, text: str) -> list[int]:
        if self._vocab is not None:
            return self._vocab.tokenize(text, add_special=False, parse_special=True)
        kind = self.report.kind if self.report is not None else ""
        if kind == "llama-server":
            out = self.http.post_json("/tokenize", {"content": text, "add_special": False, "parse_special": True})
        elif kind == "vllm":
            out = self.http.post_json(
                "/tokenize", {"model": self._require().model, "prompt": text, "add_special_tokens": False}
            )
        else:
            out = self.http.post_json("/extras/tokenize", {"input": text})
        tokens = out.get("tokens") if isinstance(out, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise RemoteError(f"the engine at {self.http.where} answered tokenize with something else")
        return tokens

    def segment_tokenize(self, text: str) -> list[int]:
        tokens = self._raw_tokenize(text)
        n = len(self._bos_prefix)
        return tokens[n:] if n and tokens[:n] == self._bos_prefix else tokens

    def tokenize(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        tokens = self.segment_tokenize(text)
        want = self._add_bos if add_bos is None else add_bos
        return [self._bos, *tokens] if want and self._bos >= 0 else tokens

    def detokenize(self, tokens: Sequence[int]) -> str:
        if self._vocab is not None:
            return str(self._vocab.detokenize(tokens))
        kind = self._require().kind
        if kind == "llama-server":
            out = self.http.post_json("/detokenize", {"tokens": list(tokens)})
            text = out.get("content") if isinstance(out, dict) else None
        elif kind == "vllm":
            out = self.http.post_json("/detokenize", {"model": self._require().model, "tokens": list(tokens)})
            text = out.get("prompt") if isinstance(out, dict) else None
        else:
            out = self.http.post_json("/extras/detokenize", {"tokens": list(tokens)})
            text = out.get("text") if isinstance(out, dict) else None
        if not isinstance(text, str):
            raise RemoteError(f"the engine at {self.http.where} answered detokenize with something else")
        return text

    def cached_tokens(self) -> list[int]:
        """What a prefix-caching server is expected to hold: the last prompt sent."""
        return list(self._sent)

    def plan(self, prompt: str | Sequence[int]) -> ReusePlan:
        """The reuse a prefix-caching server would make of the last prompt (servers do not shift)."""
        tokens = list(prompt) if not isinstance(prompt, str) else self.tokenize(prompt)
        keep = min(common_prefix(self._sent, tokens), max(0, len(tokens) - 1))
        return ReusePlan(keep, keep, 0, len(tokens))

    def snapshot_key(self) -> None:
        """No KV snapshots: the server owns its cache."""
        return None

    def kv_owner(self) -> object:
        return None

    def kv_serial(self) -> int:
        return -1

    def reset(self) -> None:
        self._sent = []

    def close(self) -> None:
        self.cancel()
        self.http.close()
        self.report = None
        if self._vocab is not None:
            self._vocab.close()
            self._vocab = None

    # -- generating ------------------------------------------------------------------

    def generate(
        self,
        prompt: str | Sequence[int],
        sampler: SamplerSettings | None = None,
        stop: Sequence[str] = (),
        *,
        stream_interval: float = STREAM_INTERVAL,
        allow_shift: bool = True,
        owner: object = None,
        text: str | None = None,
    ) -> Generation:
        """Start a reply on the server; `text` is the prompt as text, for servers that take no token ids."""
        sampler = sampler or SamplerSettings()
        sampler.validate()
        self._require()
        gen = Generation(self, prompt, sampler, stop, stream_interval, allow_shift, owner)  # type: ignore[arg-type]
        threading.Thread(target=self._run, args=(gen, text), name="cattery-remote", daemon=True).start()
        return gen

    def cancel(self) -> None:
        current = self._current
        if current is not None:
            current.cancel()

    def _abort_if_current(self, gen: Generation) -> None:
        stream = self._streams.get(id(gen))
        if stream is not None:
            stream.close()  # the connection goes: the server stops generating

    def _run(self, gen: Generation, text: str | None) -> None:
        with self._lock:
            self._current = gen
            try:
                stats = self._stream(gen, text)
            except BaseException as exc:  # the consumer re-raises it on its own thread
                gen._queue.put(exc)
            else:
                gen._queue.put(_End(stats))
            finally:
                self._current = None
                self._streams.pop(id(gen), None)

    def _stream(self, gen: Generation, text: str | None) -> GenerationStats:
        report = self._require()
        s = gen.sampler
        tokens = list(gen.prompt) if not isinstance(gen.prompt, str) else None
        seed = s.seed if s.seed is not None else int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        stats = GenerationStats(prompt_tokens=len(tokens) if tokens is not None else 0, seed=seed)
        if gen.cancelled:
            stats.finish_reason = "cancelled"
            return stats
        if tokens is not None and len(tokens) >= report.n_ctx:
            from app.errors import ContextOverflowError

            raise ContextOverflowError(
                f"the prompt is {len(tokens)} tokens but the server's context holds {report.n_ctx}"
            )
        plan = self.plan(tokens) if tokens is not None else None
        start = time.perf_counter()
        if report.kind == "llama-server":
            path, body = "/completion", self._native_body(gen, tokens, text, seed)
        else:
            path, body = "/v1/completions", self._openai_body(gen, tokens, text, seed)
        stream = self.http.stream(path, body)
        self._streams[id(gen)] = stream
        if gen.cancelled:
            stream.close()
        pending = produced = ""
        last_flush = time.perf_counter()
        finish = ""
        try:
            for event in stream:
                piece, done, reason, extra = _event_parts(report.kind, event)
                if piece:
                    if not stats.generated_tokens:
                        stats.time_to_first_token = time.perf_counter() - start
                        stats.prompt_seconds = stats.time_to_first_token
                    stats.generated_tokens += 1  # an event per token; the server's own count replaces it
                    pending += piece
                    produced += piece
                    now = time.perf_counter()
                    if now - last_flush >= gen.stream_interval:
                        gen._queue.put(pending)
                        pending, last_flush = "", now
                if extra.get("timings"):
                    _apply_timings(stats, extra["timings"])
                if extra.get("usage"):
                    _apply_usage(stats, extra["usage"])
                if done:
                    finish = reason
                    stats.stop_string = extra.get("stop_string")
                    if report.kind != "vllm":
                        break  # vLLM sends its usage (tokens taken from its prefix cache) in one more event
        finally:
            if pending:  # what came before a fault is the reply so far: kept
                gen._queue.put(pending)
        end = time.perf_counter()
        stats.decode_seconds = max(0.0, end - start - stats.time_to_first_token)
        stats.decode_steps = max(0, stats.generated_tokens - 1)
        if stream.closed and gen.cancelled and not finish:
            stats.finish_reason = "cancelled"
        elif not finish:
            raise RemoteError(f"the connection to the engine at {self.http.where} was cut mid-reply")
        else:
            stats.finish_reason = finish
        if tokens is not None:
            self._sent = tokens + self._reply_tokens(produced)  # what a prefix-caching server now holds
            if plan is not None and not stats.prompt_evaluated and not stats.prompt_reused:
                stats.prompt_reused = plan.reused  # the server did not say: what a prefix cache would keep
                stats.prompt_evaluated = plan.to_evaluate
        return stats

    def _text(self, tokens: list[int] | None, text: str | None) -> str:
        """The prompt as text: as the chat rendered it, else spelled back from its tokens."""
        return text if text is not None else self.detokenize(tokens or [])

    def _reply_tokens(self, text: str) -> list[int]:
        """The reply as the server's tokens (it keeps them cached after the prompt); none if it
        cannot say (the next turn's count is then an estimate that errs high)."""
        if not text:
            return []
        try:
            return self.segment_tokenize(text)
        except RemoteError:
            return []

    def _native_body(self, gen: Generation, tokens: list[int] | None, text: str | None, seed: int) -> dict[str, Any]:
        s = gen.sampler
        body: dict[str, Any] = {
            "prompt": tokens if tokens is not None and self._vocab is None else self._text(tokens, text),
            "n_predict": s.max_tokens,
            "temperature": s.temperature,
            "top_k": s.top_k,
            "top_p": s.top_p,
            "min_p": s.min_p,
            "typical_p": s.typical_p,
            "repeat_penalty": s.repeat_penalty,
            "repeat_last_n": s.repeat_last_n,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
            "mirostat": s.mirostat,
            "mirostat_tau": s.mirostat_tau,
            "mirostat_eta": s.mirostat_eta,
            "seed": seed,
            "stop": list(gen.stop),
            "stream": True,
            "cache_prompt": True,
            "ignore_eos": s.ban_eos,
        }
        if s.grammar:
            body["grammar"] = s.grammar
        return body

    def _openai_body(self, gen: Generation, tokens: list[int] | None, text: str | None, seed: int) -> dict[str, Any]:
        report = self._require()
        s = gen.sampler
        if report.kind == "vllm" and tokens is not None and self._vocab is None:
            prompt: Any = tokens
        else:
            prompt = self._text(tokens, text)
        body: dict[str, Any] = {
            "model": report.model,
            "prompt": prompt,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": seed,
            "stop": list(gen.stop)[:4] if report.kind == "openai" else list(gen.stop),
            "stream": True,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
        }
        # The samplers OpenAI's API lacks, where the server is known to take them.
        if report.kind == "llama-cpp-python":
            body.update(
                top_k=s.top_k,
                min_p=s.min_p,
                repeat_penalty=s.repeat_penalty,
                mirostat_mode=s.mirostat,
                mirostat_tau=s.mirostat_tau,
                mirostat_eta=s.mirostat_eta,
            )
            if s.grammar:
                body["grammar"] = s.grammar
            if s.ban_eos and self._eos:  # its server has no ignore_eos; a bias does the same
                body["logit_bias"] = {str(t): -100.0 for t in self._eos}
        elif report.kind == "vllm":
            body.update(
                top_k=s.top_k if s.top_k > 0 else -1,
                min_p=s.min_p,
                repetition_penalty=s.repeat_penalty,
                ignore_eos=s.ban_eos,
            )
            body["stream_options"] = {"include_usage": True}
        elif s.ban_eos and self._eos:  # OpenAI's API: a bias of -100 bans a token
            body["logit_bias"] = {str(t): -100 for t in self._eos}
        return body


def _event_parts(kind: str, event: dict[str, Any]) -> tuple[str, bool, str, dict[str, Any]]:
    """(text, finished, finish reason in Cattery's words, extras) of one streamed event."""
    extra: dict[str, Any] = {}
    if kind == "llama-server":
        piece = event.get("content")
        piece = piece if isinstance(piece, str) else ""
        done = bool(event.get("stop"))
        reason = ""
        if done:
            stop_type = event.get("stop_type")
            reason = {"eos": "stop", "limit": "length", "word": "stop_string"}.get(str(stop_type), "stop")
            if reason == "stop_string" and isinstance(event.get("stopping_word"), str):
                extra["stop_string"] = event["stopping_word"][:200]
            if isinstance(event.get("timings"), dict):
                extra["timings"] = event["timings"]
        return piece, done, reason, extra
    choices = event.get("choices")
    if isinstance(event.get("usage"), dict):
        extra["usage"] = event["usage"]
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return "", False, "", extra
    choice = choices[0]
    piece = choice.get("text")
    piece = piece if isinstance(piece, str) else ""
    reason = choice.get("finish_reason")
    done = isinstance(reason, str) and bool(reason)
    mapped = {"stop": "stop", "length": "length"}.get(str(reason), "stop") if done else ""
    if done and isinstance(choice.get("stop_reason"), str):  # vLLM: the stop string that ended it
        mapped, extra["stop_string"] = "stop_string", choice["stop_reason"][:200]
    return piece, done, mapped, extra


def _apply_timings(stats: GenerationStats, timings: dict[str, Any]) -> None:
    """llama-server's own account: prompt tokens evaluated (the rest came from its cache) and speeds."""
    n = _int(timings.get("prompt_n"))
    if n is not None:
        stats.prompt_evaluated = n
        stats.prompt_reused = max(0, stats.prompt_tokens - n)
    predicted = _int(timings.get("predicted_n"))
    if predicted is not None:
        stats.generated_tokens = predicted


def _apply_usage(stats: GenerationStats, usage: dict[str, Any]) -> None:
    completion = _int(usage.get("completion_tokens"))
    if completion is not None:
        stats.generated_tokens = completion
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else None
    prompt = _int(usage.get("prompt_tokens"))
    if cached is not None and prompt is not None:  # vLLM with prefix caching reports it
        stats.prompt_reused, stats.prompt_evaluated = cached, max(0, prompt - cached)


def _short_text(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= 256 else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 40 else None


def _model_ids(models: Any) -> list[str]:
    data = models.get("data") if isinstance(models, dict) else None
    if not isinstance(data, list):
        return []
    return [str(m["id"])[:300] for m in data[:100] if isinstance(m, dict) and isinstance(m.get("id"), str)]


def _max_model_len(models: Any, model: str) -> int | None:
    data = models.get("data") if isinstance(models, dict) else None
    for m in data if isinstance(data, list) else []:
        if isinstance(m, dict) and m.get("id") == model:
            return _int(m.get("max_model_len"))
    return None
