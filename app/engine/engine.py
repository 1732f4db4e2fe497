"""The engine: one model, one dedicated thread, streaming generations.

A llama context is not thread-safe, so every llama.cpp call runs on the engine's
single worker thread; callers get results through futures and a queue. The engine
keeps track of which tokens are in the KV cache and evaluates only what changed
after the longest common prefix, which is what makes the next chat turn fast.
"""

from __future__ import annotations

import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engine.libraries import load_llama_first
from app.engine.metadata import ModelInfo, read_model_info
from app.engine.options import LoadOptions, SamplerSettings
from app.engine.placement import choose_gpu_layers
from app.engine.preflight import DEFAULT_CTX, check_memory, choose_ctx, context_warnings
from app.engine.reuse import ReusePlan, plan_reuse
from app.engine.snapshot import KVState, SnapshotDamaged, SnapshotKey, SnapshotMismatch
from app.engine.stats import GenerationStats, LoadReport
from app.engine.textstream import TextStream
from app.errors import CatteryError, ContextOverflowError

if TYPE_CHECKING:
    from app.engine.native import NativeModel


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except Exception:  # psutil cannot count on some containers
        return os.cpu_count() or 1


STREAM_INTERVAL = 1 / 60  # a screen's refresh: no one sees text arrive faster


class _End:
    def __init__(self, stats: GenerationStats) -> None:
        self.stats = stats


class Generation:
    """A reply being generated: iterate it for text pieces; `stats` is set when it ends.

    Breaking out of the iteration cancels the generation. `cancel()` may be called
    from any thread (a UI, a signal handler) and takes effect within one token.
    """

    def __init__(
        self,
        engine: Engine,
        prompt: str | Sequence[int],
        sampler: SamplerSettings,
        stop: Sequence[str],
        stream_interval: float,
        allow_shift: bool = True,
        owner: object = None,
    ) -> None:
        self._engine = engine
        self.stream_interval = stream_interval
        self.allow_shift = allow_shift
        self.owner = owner
        self.prompt = prompt
        self.sampler = sampler
        self.stop = list(stop)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._finished = False
        self.text = ""
        self.stats: GenerationStats | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()
        self._engine._abort_if_current(self)

    def __iter__(self) -> Iterator[str]:
        try:
            while not self._finished:
                item = self._queue.get()
                if isinstance(item, str):
                    self.text += item
                    yield item
                elif isinstance(item, _End):
                    self.stats = item.stats
                    self._finished = True
                else:
                    self._finished = True
                    raise item
        finally:
            if not self._finished:
                self.cancel()
                for _ in self:
                    pass

    def result(self) -> str:
        """Wait for the end and return the whole reply."""
        for _ in self:
            pass
        return self.text


class Engine:
    """Owns at most one loaded model. Thread-safe: any thread may call any method."""

    def __init__(self, log_file: Path | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cattery-engine")
        self._model: NativeModel | None = None
        self._current: Generation | None = None
        self._lock = threading.Lock()
        self._log_file = log_file
        self.info: ModelInfo | None = None
        self.report: LoadReport | None = None

    # -- loading -----------------------------------------------------------------

    def load(
        self,
        path: Path,
        options: LoadOptions | None = None,
        *,
        default_ctx: int = DEFAULT_CTX,
        progress: Callable[[float], bool] | None = None,
    ) -> LoadReport:
        """Check, then load `path` (replacing any model loaded before). Blocks until loaded.

        Raises `CatteryError` with one line for anything the user can fix.
        """
        options = options or LoadOptions()
        options.validate()
        load_llama_first()  # before read_model_info imports gguf-py and numpy (issue 16)
        info = read_model_info(Path(path))
        from app.engine import native

        native.LOG.install(self._log_file)
        warnings: list[str] = list(info.warnings)  # what the file got wrong and llama.cpp lets go
        n_ctx = choose_ctx(info, options, default_ctx)
        warnings += context_warnings(info, n_ctx, options)
        offload = native.offload_supported()
        n_layers = info.block_count or 0
        choice = choose_gpu_layers(info, n_ctx, options, offload=offload)
        warnings += choice.warnings
        gpu_layers = choice.gpu_layers
        if options.cache_type_v not in ("f16", "f32", "bf16") and options.flash_attn == "off":
            raise CatteryError(f"a {options.cache_type_v} V cache needs flash attention: use --flash-attn auto or on")
        check_memory(info, n_ctx, options, n_layers + 1 if gpu_layers < 0 else gpu_layers)
        threads = options.threads or _physical_cores()
        threads_batch = options.threads_batch or os.cpu_count() or threads

        def job() -> tuple[NativeModel, float]:
            self._close_model()
            start = time.perf_counter()
            model = native.NativeModel(
                info.path,
                options,
                n_ctx=n_ctx,
                gpu_layers=gpu_layers,
                threads=threads,
                threads_batch=threads_batch,
                progress=progress,
            )
            self._model = model
            return model, time.perf_counter() - start

        model, seconds = self._pool.submit(job).result()
        self.info = info
        self.report = LoadReport(
            path=info.path,
            n_ctx=model.n_ctx,
            n_ctx_train=model.n_ctx_train,
            n_layers=model.n_layer,
            gpu_layers=model.gpu_layers_offloaded,
            offload_supported=offload,
            threads=threads,
            threads_batch=threads_batch,
            batch=options.batch,
            flash_attn=options.flash_attn,
            cache_type_k=options.cache_type_k,
            cache_type_v=options.cache_type_v,
            rope_freq_base=options.rope_freq_base,
            rope_scale=options.rope_scale,
            load_seconds=seconds,
            warnings=warnings,
            vram_free=choice.vram_free,
        )
        if options.warmup:
            self._pool.submit(self._warmup, model)
        return self.report

    @staticmethod
    def _warmup(model: NativeModel) -> None:
        try:
            model.warmup()
        except Exception:  # a failed warm-up only costs speed on the first token
            model.clear_kv()

    def _close_model(self) -> None:
        if self._model is not None:
            self._model.close()
            self._model = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def n_ctx(self) -> int:
        return self._require().n_ctx

    def _require(self) -> NativeModel:
        if self._model is None:
            raise CatteryError("no model is loaded")
        return self._model

    def _run(self, fn: Callable[[NativeModel], Any]) -> Any:
        return self._pool.submit(lambda: fn(self._require())).result()

    def tokenize(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        return self._run(lambda m: self._prompt_tokens(m, text, add_bos))

    def segment_tokenize(self, text: str) -> list[int]:
        """Tokens of `text` exactly, with special tokens parsed and no BOS added."""
        return self._run(lambda m: m.tokenize(text, add_special=False, parse_special=True))

    @property
    def bos_token(self) -> int:
        return self._run(lambda m: m.bos_token)

    @property
    def add_bos(self) -> bool:
        return self._run(lambda m: m.add_bos)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._run(lambda m: m.detokenize(tokens))

    def cached_tokens(self) -> list[int]:
        return self._run(lambda m: list(m.kv_tokens))

    def plan(self, prompt: str | Sequence[int]) -> ReusePlan:
        """What the next generation of `prompt` would reuse and evaluate, without running it."""
        return self._run(lambda m: plan_reuse(m.kv_tokens, self._prompt_tokens(m, prompt, None), m.can_shift))

    def reset(self) -> None:
        """Forget the KV cache, so the next prompt is evaluated from scratch: the benches
        time cold evaluation with it and the tests start from a known cache."""
        self._run(lambda m: m.clear_kv())

    def unload(self) -> None:
        """Free the model and its KV cache but keep the engine for a later load: the app lets that
        memory go while it chats through a server, and loads here again when asked."""
        current = self._current
        if current is not None:
            current.cancel()
        self._pool.submit(self._close_model).result()
        self.report = None

    def close(self) -> None:
        current = self._current
        if current is not None:
            current.cancel()
        self._pool.submit(self._close_model).result()
        self._pool.shutdown(wait=True)

    # -- KV-cache snapshots ----------------------------------------------------------

    def snapshot_key(self) -> SnapshotKey | None:
        """What a state of the loaded model's cache is valid for; None when nothing is loaded.

        Computed once per loaded model (the model file's identity reads 2 MiB of it)."""
        m = self._model
        report = self.report
        if m is None or report is None:
            return None
        cached = self._snapshot_key_cache
        if cached is not None and cached[0] is m:
            return cached[1]
        import llama_cpp as L

        from app.engine.snapshot import build_identity, model_identity

        found = m.context_settings()
        rope_scale = 1.0 / report.rope_scale if report.rope_scale else 1.0
        key = SnapshotKey(
            model_id=model_identity(m.path),
            n_ctx=m.n_ctx,
            type_k=report.cache_type_k,
            type_v=report.cache_type_v,
            rope_freq_base=float(found.get("freq_base", report.rope_freq_base or 0.0)),
            rope_freq_scale=float(found.get("freq_scale", rope_scale)),
            flash_attn=str(found.get("flash_attn", report.flash_attn)),
            build=build_identity(
                str(L.__version__),
                (L.llama_print_system_info() or b"").decode("utf-8", "replace"),
                Path(getattr(L.llama_cpp._lib, "_name", "") or "") or None,
            ),
            seq_version=int(getattr(L, "LLAMA_STATE_SEQ_VERSION", 0)),
        )
        self._snapshot_key_cache = (m, key)
        return key

    _snapshot_key_cache: tuple[NativeModel, SnapshotKey] | None = None

    def _check_key_of(self, m: NativeModel) -> None:
        """On the engine thread: the key taken on the caller's thread is the running model's
        (a load queued in between would make a state that says the wrong model)."""
        cached = self._snapshot_key_cache
        if cached is None or cached[0] is not m:
            raise CatteryError("the model changed while its KV state was being saved or restored")

    def kv_owner(self) -> object:
        """Whose prompt the cache holds (the `owner` of the last generation or import; None: nobody's)."""
        m = self._model
        return m.kv_owner if m is not None else None

    def kv_serial(self) -> int:
        """A number that changes whenever a generation, an import or a clear changes the cache
        (read from any thread): a `fit` computed from the chat is only right for the cache it saw."""
        m = self._model
        return m.kv_serial if m is not None else -1

    def export_state(
        self, fit: Sequence[int] | None = None, owner: object = None, serial: int | None = None
    ) -> KVState:
        """Sequence 0's KV cache and the tokens it holds, as a job between generations.

        Only a copy into memory happens on the engine thread (writing a file is the caller's,
        on its own thread), so a turn asked for meanwhile waits for a memcpy, not a disk.

        `fit`: the prompt the chat's next turn starts with (the pinned block and the window).
        The cache is first edited as a generation of that prompt would edit it (the common
        prefix kept, a window that slid shifted, the rest dropped), so the state holds only
        what the next turn reuses: no bytes are kept for a tail it would evaluate again (a
        stop string's text, a reply cut and trimmed, the turns that left the window).

        `owner`: the chat asking. If the cache holds another's prompt by now (a chat opened
        meanwhile, its state imported or a turn run), the state is empty and the cache untouched;
        likewise if `serial` (`kv_serial()` when `fit` was computed) is no longer the cache's.
        """
        key = self.snapshot_key()
        if key is None:
            raise CatteryError("no model is loaded")
        wanted = list(fit) if fit is not None else None

        def job(m: NativeModel) -> KVState:
            self._check_key_of(m)
            if (owner is not None and m.kv_owner != owner) or (serial is not None and m.kv_serial != serial):
                return KVState(key=key, tokens=[], data=b"")
            if wanted is not None:
                plan = plan_reuse(m.kv_tokens, wanted, m.can_shift)
                if plan.shifted:
                    m.shift_kv(plan.keep, plan.shift_from)
                m.truncate_kv(plan.reused)
            data = m.export_state()
            return KVState(key=key, tokens=list(m.kv_tokens), data=data)

        return self._run(job)

    def state_size(self) -> int:
        """Bytes an `export_state()` now would take (llama.cpp counts without copying): for
        saying the size before a big save."""
        return self._run(lambda m: m.state_size())

    def import_state(self, state: KVState, owner: object = None) -> int:
        """Put `state` in the KV cache in place of what is there; returns the tokens restored.

        Refused (SnapshotMismatch) if it was made for another model, context, KV type, RoPE,
        flash attention or build, or holds more tokens than the context: the cache is left
        as it was. If llama.cpp does not take the bytes (SnapshotDamaged), the cache is
        left empty. Afterwards the next prompt reuses the restored tokens as it would
        its own: the common prefix, or a context shift.
        """
        key = self.snapshot_key()
        if key is None:
            raise CatteryError("no model is loaded")
        why = key.difference(state.key)
        if why is not None:
            raise SnapshotMismatch(f"the snapshot was {why}")
        tokens = state.tokens

        def job(m: NativeModel) -> int:
            self._check_key_of(m)
            if len(tokens) > m.n_ctx:
                raise SnapshotMismatch(f"the snapshot holds {len(tokens)} tokens, the context {m.n_ctx}")
            n_vocab = m.n_vocab
            if any(not 0 <= t < n_vocab for t in tokens):
                raise SnapshotDamaged("the snapshot holds a token the model does not have")
            if not m.import_state(state.data, tokens):
                raise SnapshotDamaged("llama.cpp did not take the snapshot's state (the cache was cleared)")
            m.kv_owner = owner
            m.kv_serial += 1
            return len(tokens)

        return self._run(job)

    # -- generation ----------------------------------------------------------------

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
        """Start a reply; generations run one after another in the order asked for.

        Text is handed to the consumer at most every `stream_interval` seconds, the
        tokens in between joined into one piece: waking the consumer thread for
        every token steals CPU from llama.cpp's threads when they use every core.
        A model slower than the interval still streams token by token; 0 means
        one piece per token. `allow_shift=False` re-evaluates everything after the
        common prefix, as llama-cpp-python does (for comparisons). `owner`: whose prompt
        this is (a chat id): the cache is then that chat's, for `export_state`. `text`: the
        prompt as text, for a remote engine that takes no token ids (unused here).
        """
        sampler = sampler or SamplerSettings()
        sampler.validate()
        self._require()
        gen = Generation(self, prompt, sampler, stop, stream_interval, allow_shift, owner)
        self._pool.submit(self._generate, gen)
        return gen

    def cancel(self) -> None:
        current = self._current
        if current is not None:
            current.cancel()

    def _abort_if_current(self, gen: Generation) -> None:
        with self._lock:
            if self._current is gen and self._model is not None:
                self._model.abort.set()

    @staticmethod
    def _prompt_tokens(m: NativeModel, prompt: str | Sequence[int], add_bos: bool | None) -> list[int]:
        if not isinstance(prompt, str):
            return list(prompt)
        tokens = m.tokenize(prompt, add_special=False, parse_special=True)
        want_bos = m.add_bos if add_bos is None else add_bos
        if want_bos and m.bos_token >= 0 and (not tokens or tokens[0] != m.bos_token):
            tokens.insert(0, m.bos_token)
        return tokens

    def _generate(self, gen: Generation) -> None:
        m = self._model
        if m is None:
            gen._queue.put(CatteryError("no model is loaded"))
            return
        with self._lock:
            self._current = gen
            m.abort.clear()
        try:
            stats = self._generate_on(m, gen)
        except BaseException as exc:  # the consumer re-raises it on its own thread
            gen._queue.put(exc)
        else:
            gen._queue.put(_End(stats))
        finally:
            with self._lock:
                self._current = None
                m.abort.clear()

    def _generate_on(self, m: NativeModel, gen: Generation) -> GenerationStats:
        from app.engine.native import DECODE_ABORTED, DECODE_OK, L

        s = gen.sampler
        seed = s.seed if s.seed is not None else secrets.randbelow(0xFFFFFFFF)
        tokens = self._prompt_tokens(m, gen.prompt, None)
        stats = GenerationStats(prompt_tokens=len(tokens), seed=seed)
        if gen.cancelled:
            stats.finish_reason = "cancelled"
            return stats
        if not tokens:
            raise CatteryError("the prompt is empty")
        if len(tokens) >= m.n_ctx:
            raise ContextOverflowError(
                f"the prompt is {len(tokens)} tokens but the context holds {m.n_ctx}; "
                "shorten it or load the model with a larger --ctx"
            )
        start = time.perf_counter()
        plan = plan_reuse(m.kv_tokens, tokens, m.can_shift and gen.allow_shift)
        if plan.shifted:
            m.shift_kv(plan.keep, plan.shift_from)
        m.truncate_kv(plan.reused)
        m.kv_owner = gen.owner
        m.kv_serial += 1
        stats.prompt_reused = plan.reused
        stats.prompt_shifted = plan.shifted
        stats.shift_removed = plan.removed
        stats.prompt_evaluated = plan.to_evaluate
        status = m.decode(tokens[plan.reused :])
        stats.prompt_seconds = time.perf_counter() - start
        if status == DECODE_ABORTED or gen.cancelled:
            stats.finish_reason = "cancelled"
            return stats
        if status != DECODE_OK:
            raise CatteryError(f"llama.cpp could not evaluate the prompt (status {status})")

        chain = m.make_sampler(s, seed, tokens)
        try:
            return self._token_loop(m, gen, chain, stats, start, L)
        finally:
            m.free_sampler(chain)

    @staticmethod
    def _token_loop(
        m: NativeModel, gen: Generation, chain: Any, stats: GenerationStats, start: float, L: Any
    ) -> GenerationStats:
        from app.engine.native import DECODE_ABORTED, DECODE_NO_SLOT, DECODE_OK

        # Locals for the hot path: one token costs a decode, a sample and little else.
        sample, ctx, piece, decode_one = L.llama_sampler_sample, m.ctx, m.piece, m.decode_one
        is_eog, vocab = L.llama_vocab_is_eog, m.vocab
        clock, put, cancel = time.perf_counter, gen._queue.put, gen._cancel
        stream = TextStream(gen.stop)
        ban_eos, max_tokens, n_ctx, kv = gen.sampler.ban_eos, gen.sampler.max_tokens, m.n_ctx, m.kv_tokens
        n = samples = 0
        t_first = t_last = last_put = 0.0
        interval, pending = gen.stream_interval, ""
        finish = ""
        while True:
            token = sample(chain, ctx, -1)
            t_last = clock()
            samples += 1
            if samples == 1:
                t_first = t_last
            if not ban_eos and is_eog(vocab, token):
                finish = "stop"
                break
            n += 1
            text = stream.feed(piece(token))
            if text:
                pending += text
                if t_last - last_put >= interval:
                    put(pending)
                    pending, last_put = "", t_last
            if stream.stopped_by is not None:
                finish = "stop_string"
                break
            if n >= max_tokens:
                finish = "length"
                break
            if cancel.is_set():
                finish = "cancelled"
                break
            if len(kv) >= n_ctx:
                finish = "context_full"
                break
            status = decode_one(token)
            if status != DECODE_OK:
                if status == DECODE_ABORTED or cancel.is_set():
                    finish = "cancelled"
                elif status == DECODE_NO_SLOT:
                    finish = "context_full"
                else:
                    raise CatteryError(f"llama.cpp decode failed (status {status})")
                break
        pending += stream.finish()
        if pending:
            put(pending)
        stats.generated_tokens = n
        stats.finish_reason = finish
        stats.stop_string = stream.stopped_by
        stats.time_to_first_token = t_first - start
        stats.decode_seconds = t_last - t_first
        stats.decode_steps = samples - 1
        return stats
