"""The thin layer over llama-cpp-python's low-level API that the engine drives.

Cattery does not use `llama_cpp.Llama`: its `eval` copies the full logits row into
numpy on every token and its sampler is rebuilt per call, which costs decode speed
and hides the KV cache Cattery wants to manage itself. Everything here uses the
structs and functions of the installed `llama_cpp` module (never copies of them),
and a struct field that the installed version lacks is an error, not a silent no-op.

Every method must run on the engine's own thread: a llama context is not thread-safe.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import llama_cpp as L

from app.engine.llama_log import LOG
from app.engine.options import LoadOptions, SamplerSettings
from app.errors import CatteryError, ModelFileError

_backend_ready = False


def set_fields(struct: Any, **values: Any) -> None:
    names = {f[0] for f in type(struct)._fields_}
    for key, value in values.items():
        if key not in names:
            raise RuntimeError(
                f"llama-cpp-python {L.__version__}: {type(struct).__name__} has no field {key!r}; "
                "install the version range pinned in pyproject.toml"
            )
        setattr(struct, key, value)


def ensure_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        LOG.install()
        L.llama_backend_init()
        _backend_ready = True


def offload_supported() -> bool:
    ensure_backend()
    return bool(L.llama_supports_gpu_offload())


# What llama_decode returns (llama.h): 0 done, 1 no KV slot for the batch (the context is
# full), 2 aborted by the abort callback (our cancel switch); negative: an error.
DECODE_OK = 0
DECODE_NO_SLOT = 1
DECODE_ABORTED = 2
GPU_DEVICE_TYPES = (1, 2)  # ggml_backend_dev_type: GPU, IGPU (ggml-backend.h of the installed wheel)


def _ggml_function(name: str, restype: Any, argtypes: list[Any]) -> Any:
    """`name` from the very libggml that llama.cpp itself loaded, never from a second copy.

    llama-cpp-python does not bind ggml's device functions. Opening libggml by a file name
    would be wrong: the wheel ships `libggml.so`, `.so.0` and `.so.0.x` as separate files,
    libllama loads `.so.0`, and opening another name maps a second copy with its own
    backend registry and device state beside the first (on a CUDA build, issue 16: a
    segmentation fault in the next model load). Looking the symbol up through libllama's
    own handle finds it in libllama's dependencies, in the order the loader resolved them:
    the one instance llama.cpp uses. `_lib[name]` makes a fresh function object, so the
    types set here never touch llama-cpp-python's own bindings.
    """
    fn = L.llama_cpp._lib[name]
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


def ggml_devices() -> list[tuple[str, int, int, int]]:
    """(name, type, free bytes, total bytes) of every device ggml has registered (the CPU too).

    The same path runs on every build, so the tests run it on a CPU build as well.
    """
    ensure_backend()
    try:
        count = _ggml_function("ggml_backend_dev_count", ctypes.c_size_t, [])
        get = _ggml_function("ggml_backend_dev_get", ctypes.c_void_p, [ctypes.c_size_t])
        kind = _ggml_function("ggml_backend_dev_type", ctypes.c_int, [ctypes.c_void_p])
        name = _ggml_function("ggml_backend_dev_name", ctypes.c_char_p, [ctypes.c_void_p])
        memory = _ggml_function(
            "ggml_backend_dev_memory",
            None,
            [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)],
        )
    except AttributeError:  # a libggml without the device API: nothing can be said about devices
        return []
    out = []
    for i in range(int(count())):
        dev = get(i)
        if not dev:
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        memory(dev, ctypes.byref(free), ctypes.byref(total))
        label = (name(dev) or b"device").decode(errors="replace")
        out.append((label, int(kind(dev)), int(free.value), int(total.value)))
    return out


def gpu_devices() -> list[tuple[str, int, int]]:
    """(name, free bytes, total bytes) of each GPU llama.cpp can offload to; [] on a CPU build."""
    ensure_backend()
    if not L.llama_supports_gpu_offload():
        return []
    return [(name, free, total) for name, kind, free, total in ggml_devices() if kind in GPU_DEVICE_TYPES]


def _ggml_type(name: str) -> int:
    return int(getattr(L, f"GGML_TYPE_{name.upper()}"))


def _libc_strlen_address() -> int:
    libc = ctypes.cdll.msvcrt if sys.platform == "win32" else ctypes.CDLL(ctypes.util.find_library("c"))
    return ctypes.cast(libc.strlen, ctypes.c_void_p).value or 0


class AbortFlag:
    """A cancel switch llama.cpp polls during `llama_decode` without touching Python.

    The CPU backend calls the abort callback once per graph node, hundreds of times
    per token. A Python callback would take the GIL each time and slow decoding; so
    the callback is libc's `strlen` on a two-byte buffer: "" (length 0, false) runs
    on, "x" (length 1, true) aborts. Setting the flag is a one-byte write.
    """

    def __init__(self) -> None:
        self._buffer = ctypes.create_string_buffer(2)
        self.callback = L.ggml_abort_callback(_libc_strlen_address())
        self.data = ctypes.cast(self._buffer, ctypes.c_void_p)

    def set(self) -> None:
        self._buffer[0] = b"x"

    def clear(self) -> None:
        self._buffer[0] = b"\0"


_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
# llama.cpp's report of the context it made: "llama_context: freq_base = 100000.0", and
# whether "auto" flash attention came out on: "Flash Attention enabled".
_CTX_SETTING = re.compile(r"llama_context: (freq_base|freq_scale)\s*=\s*([0-9.eE+-]+)")
_FLASH_RESOLVED = re.compile(r"Flash Attention (enabled|disabled)")


def load_failure(mark: int) -> str:
    """Why llama.cpp refused a load since `mark`, as one line from its own log."""
    errors = LOG.errors_since(mark)
    useful = [e for e in errors if "failed to load model" not in e] or errors
    if not useful:
        return "see the llama.cpp log (`cattery paths` shows where)"
    # "llama_model_load: error loading model: unknown model architecture: 'x'" → the reason alone
    reason = re.sub(r"^\w+: ", "", useful[0])
    return reason.removeprefix("error loading model: ")


def load_model(path: Path, mark: int, what: str = "load it", **params: Any) -> Any:
    """llama_model_load_from_file with `params` set on the defaults: the model pointer, or a one-line
    ModelFileError with llama.cpp's reason (from its log since `mark`). The caller frees the model."""
    ensure_backend()
    mp = L.llama_model_default_params()
    set_fields(mp, **params)
    model = L.llama_model_load_from_file(str(path).encode("utf-8"), mp)
    if not model:
        raise ModelFileError(f"{path}: llama.cpp cannot {what}: {load_failure(mark)}")
    return model


def new_context(model: Any, path: Path, mark: int, what: str = "the context", **params: Any) -> Any:
    """llama_init_from_model with `params` set on the defaults, or a one-line ModelFileError; the model
    stays the caller's to free either way."""
    cp = L.llama_context_default_params()
    set_fields(cp, **params)
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        raise ModelFileError(f"{path}: llama.cpp cannot create {what}: {load_failure(mark)}")
    return ctx


def offloaded_layers(load_log: list[str], requested: int, n_layer: int) -> int:
    """The layers llama.cpp says it offloaded in a load's log; else what was asked, capped."""
    for line in load_log:
        m = _OFFLOADED.search(line)
        if m:
            return int(m.group(1))
    if not L.llama_supports_gpu_offload():
        return 0
    return n_layer + 1 if requested < 0 else min(requested, n_layer + 1)


class Vocab:
    """Token helpers over the vocabulary of a loaded llama model (which must outlive them)."""

    vocab: Any
    n_vocab: int

    def __init__(self, model: Any) -> None:
        self.vocab = L.llama_model_get_vocab(model)
        self.n_vocab = int(L.llama_vocab_n_tokens(self.vocab))
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        self._eog: list[int] | None = None

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 16
        buf = (L.llama_token * size)()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, size, add_special, parse_special)
        if n < 0:
            size = -n
            buf = (L.llama_token * size)()
            n = L.llama_tokenize(self.vocab, data, len(data), buf, size, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        buf = self._piece_buf
        n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        data = buf.raw[:n]
        self._pieces[token] = data
        return data

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(L.llama_vocab_is_eog(self.vocab, token))

    def eog_tokens(self) -> list[int]:
        if self._eog is None:
            self._eog = [t for t in range(self.n_vocab) if L.llama_vocab_is_eog(self.vocab, t)]
        return self._eog

    @property
    def bos_token(self) -> int:
        return int(L.llama_vocab_bos(self.vocab))

    @property
    def add_bos(self) -> bool:
        return bool(L.llama_vocab_get_add_bos(self.vocab))


class VocabModel(Vocab):
    """A model loaded for its tokenizer only (no weights): for building prompts without a context."""

    def __init__(self, path: Path) -> None:
        ensure_backend()
        self.model = load_model(path, LOG.mark(), "load its vocabulary", vocab_only=True)
        super().__init__(self.model)

    def close(self) -> None:
        if getattr(self, "model", None):
            L.llama_model_free(self.model)
            self.model = None


class NativeModel(Vocab):
    """One loaded model with its context, KV cache bookkeeping and token helpers."""

    def __init__(
        self,
        path: Path,
        options: LoadOptions,
        *,
        n_ctx: int,
        gpu_layers: int,
        threads: int,
        threads_batch: int,
        progress: Callable[[float], bool] | None = None,
    ) -> None:
        ensure_backend()
        self.path = path
        mark = LOG.mark()

        if options.mmap and options.mlock:
            mode = L.LLAMA_LOAD_MODE_MMAP_MLOCK
        elif options.mmap:
            mode = L.LLAMA_LOAD_MODE_MMAP
        elif options.mlock:
            mode = L.LLAMA_LOAD_MODE_MLOCK
        else:
            mode = L.LLAMA_LOAD_MODE_NONE
        self._progress_cb = None
        fields: dict[str, Any] = {"n_gpu_layers": gpu_layers, "load_mode": mode}
        if progress is not None:
            self._progress_cb = L.llama_progress_callback(lambda value, _data: bool(progress(value)))
            fields["progress_callback"] = self._progress_cb
        model = load_model(path, mark, **fields)
        self.model = model
        super().__init__(model)
        self.n_layer = int(L.llama_model_n_layer(model))
        self.n_ctx_train = int(L.llama_model_n_ctx_train(model))

        flash = {
            "auto": L.LLAMA_FLASH_ATTN_TYPE_AUTO,
            "on": L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
            "off": L.LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }[options.flash_attn]
        self.abort = AbortFlag()
        ctx_fields: dict[str, Any] = {
            "n_ctx": n_ctx,
            "n_batch": options.batch,
            "n_ubatch": options.batch,
            "n_seq_max": 1,
            "n_threads": threads,
            "n_threads_batch": threads_batch,
            "flash_attn_type": flash,
            "type_k": _ggml_type(options.cache_type_k),
            "type_v": _ggml_type(options.cache_type_v),
            "abort_callback": self.abort.callback,
            "abort_callback_data": self.abort.data,
            "no_perf": True,
        }
        if options.rope_freq_base:
            ctx_fields["rope_freq_base"] = float(options.rope_freq_base)
        if options.rope_scale:
            ctx_fields["rope_scaling_type"] = L.LLAMA_ROPE_SCALING_TYPE_LINEAR
            ctx_fields["rope_freq_scale"] = 1.0 / float(options.rope_scale)
        try:
            ctx = new_context(model, path, mark, **ctx_fields)
        except ModelFileError:
            L.llama_model_free(model)
            self.model = None
            raise
        self.ctx = ctx
        self.memory = L.llama_get_memory(ctx)
        self.n_ctx = int(L.llama_n_ctx(ctx))
        self.n_batch = options.batch
        self.kv_tokens: list[int] = []
        # Whose prompt the cache holds (a chat id, set by a generation or an import that names
        # one): a state kept for a chat is only ever taken from that chat's own cache.
        self.kv_owner: object = None
        self.kv_serial = 0  # counts the changes a generation, an import or a clear make to the cache
        self.load_log = LOG.lines_since(mark)
        self.gpu_layers_offloaded = offloaded_layers(self.load_log, gpu_layers, self.n_layer)
        self._one = (L.llama_token * 1)()
        self._one_batch = L.llama_batch_get_one(self._one, 1)

    # -- KV cache -----------------------------------------------------------------

    def truncate_kv(self, n_keep: int) -> None:
        """Drop every cached position from `n_keep` on."""
        if n_keep < len(self.kv_tokens):
            L.llama_memory_seq_rm(self.memory, 0, n_keep, -1)
            del self.kv_tokens[n_keep:]

    @property
    def can_shift(self) -> bool:
        return bool(L.llama_memory_can_shift(self.memory))

    def shift_kv(self, keep: int, start: int) -> None:
        """Remove cache positions [keep, start) and move everything after them left.

        Only call where `can_shift` is true: llama.cpp aborts the process otherwise.
        """
        delta = start - keep
        L.llama_memory_seq_rm(self.memory, 0, keep, start)
        L.llama_memory_seq_add(self.memory, 0, start, -1, -delta)
        del self.kv_tokens[keep:start]

    def clear_kv(self) -> None:
        L.llama_memory_clear(self.memory, True)
        self.kv_tokens.clear()
        self.kv_owner = None
        self.kv_serial += 1

    def decode(self, tokens: Sequence[int]) -> int:
        """Evaluate tokens after those in the cache, in batches. Returns llama_decode's status.

        On failure or abort the partly written batch is removed, so `kv_tokens`
        always matches the cache.
        """
        step = self.n_batch
        for start in range(0, len(tokens), step):
            chunk = tokens[start : start + step]
            arr = (L.llama_token * len(chunk))(*chunk)
            status = L.llama_decode(self.ctx, L.llama_batch_get_one(arr, len(chunk)))
            if status != DECODE_OK:
                L.llama_memory_seq_rm(self.memory, 0, len(self.kv_tokens), -1)
                return int(status)
            self.kv_tokens.extend(chunk)
        return DECODE_OK

    def decode_one(self, token: int) -> int:
        """The hot path of generation: one token through a batch made once."""
        self._one[0] = token
        status = L.llama_decode(self.ctx, self._one_batch)
        if status != DECODE_OK:
            L.llama_memory_seq_rm(self.memory, 0, len(self.kv_tokens), -1)
            return int(status)
        self.kv_tokens.append(token)
        return DECODE_OK

    def warmup(self) -> None:
        """Touch every weight once so the first real token is not slowed by mmap paging."""
        L.llama_set_warmup(self.ctx, True)
        token = self.bos_token if self.bos_token >= 0 else 0
        self.decode([token])
        L.llama_set_warmup(self.ctx, False)
        self.clear_kv()

    # -- sequence state (KV-cache snapshots) ---------------------------------------

    def context_settings(self) -> dict[str, Any]:
        """RoPE base/scale and flash attention as the context really has them, from llama.cpp's
        own report of the context it made (the options say "auto" or 0 for "the model's")."""
        found: dict[str, Any] = {}
        for line in self.load_log:
            m = _CTX_SETTING.search(line)
            if m:
                with contextlib.suppress(ValueError):
                    found[m.group(1)] = float(m.group(2))
            m = _FLASH_RESOLVED.search(line)
            if m:
                found["flash_attn"] = "on" if m.group(1) == "enabled" else "off"
        return found

    def state_size(self) -> int:
        return int(L.llama_state_seq_get_size(self.ctx, 0))

    def export_state(self) -> bytearray:
        """Sequence 0's state, copied once by llama.cpp straight into a new buffer."""
        size = self.state_size()
        buf = bytearray(size)
        if size == 0:
            return buf
        view = (ctypes.c_uint8 * size).from_buffer(buf)
        written = int(L.llama_state_seq_get_data(self.ctx, view, size, 0))
        del view  # release the export on `buf`
        if written != size:
            raise CatteryError(f"llama.cpp wrote {written} bytes of state where it said {size}")
        return buf

    def import_state(self, data: bytes | bytearray, tokens: Sequence[int]) -> bool:
        """Replace the cache with `data` (a sequence state) holding `tokens`.

        True if llama.cpp took it and the positions it holds are exactly 0..len(tokens)-1;
        otherwise the cache is cleared (llama.cpp may have taken part of it) and False.
        """
        self.clear_kv()
        if not tokens:  # an empty cache: nothing to restore, whatever the bytes say
            return True
        if not data:
            return False
        size = len(data)
        # set_data only reads; a bytes object is copied into a ctypes array once, a
        # bytearray is lent as it is.
        buf = (
            (ctypes.c_uint8 * size).from_buffer(data)
            if isinstance(data, bytearray)
            else ((ctypes.c_uint8 * size).from_buffer_copy(data))
        )
        try:
            read = int(L.llama_state_seq_set_data(self.ctx, buf, size, 0))
        finally:
            del buf
        lo = int(L.llama_memory_seq_pos_min(self.memory, 0))
        hi = int(L.llama_memory_seq_pos_max(self.memory, 0))
        if read != size or lo != 0 or hi != len(tokens) - 1:
            self.clear_kv()
            return False
        self.kv_tokens[:] = list(tokens)
        return True

    # -- sampling -----------------------------------------------------------------

    def make_sampler(self, s: SamplerSettings, seed: int, history: Sequence[int]) -> Any:
        """A native sampler chain in llama.cpp's usual order; the penalties see the prompt too.

        Tokens are only ever accepted that the chain itself sampled, so a grammar
        never sees a token it forbids.
        """
        params = L.llama_sampler_chain_default_params()
        set_fields(params, no_perf=True)
        chain = L.llama_sampler_chain_init(params)

        def add(sampler: Any) -> None:
            L.llama_sampler_chain_add(chain, sampler)

        if s.grammar:
            grammar = L.llama_sampler_init_grammar(self.vocab, s.grammar.encode("utf-8"), b"root")
            if not grammar:
                L.llama_sampler_free(chain)
                raise CatteryError("the grammar does not parse (GBNF with a `root` rule expected)")
            add(grammar)
        if s.ban_eos and not s.grammar:  # a finished grammar allows only end-of-text
            eog = self.eog_tokens()
            biases = (L.llama_logit_bias * len(eog))()
            for i, token in enumerate(eog):
                biases[i].token = token
                biases[i].bias = float("-inf")
            add(L.llama_sampler_init_logit_bias(self.n_vocab, len(eog), biases))
        last_n = self.n_ctx if s.repeat_last_n < 0 else s.repeat_last_n
        penalised = last_n > 0 and (s.repeat_penalty != 1.0 or s.frequency_penalty != 0.0 or s.presence_penalty != 0.0)
        if penalised:
            penalties = L.llama_sampler_init_penalties(
                self.n_vocab, last_n, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
            )
            # Only the penalties see the prompt: a grammar sampler fed tokens it does
            # not allow throws a C++ exception, which aborts the process.
            for token in history[-last_n:]:
                L.llama_sampler_accept(penalties, token)
            add(penalties)
        if s.temperature <= 0:
            add(L.llama_sampler_init_greedy())
        elif s.mirostat == 1:
            add(L.llama_sampler_init_temp(s.temperature))
            add(L.llama_sampler_init_mirostat(self.n_vocab, seed, s.mirostat_tau, s.mirostat_eta, 100))
        elif s.mirostat == 2:
            add(L.llama_sampler_init_temp(s.temperature))
            add(L.llama_sampler_init_mirostat_v2(seed, s.mirostat_tau, s.mirostat_eta))
        else:
            if s.top_k > 0:
                add(L.llama_sampler_init_top_k(s.top_k))
            if s.typical_p < 1.0:
                add(L.llama_sampler_init_typical(s.typical_p, 1))
            if s.top_p < 1.0:
                add(L.llama_sampler_init_top_p(s.top_p, 1))
            if s.min_p > 0.0:
                add(L.llama_sampler_init_min_p(s.min_p, 1))
            add(L.llama_sampler_init_temp(s.temperature))
            add(L.llama_sampler_init_dist(seed))
        return chain

    @staticmethod
    def free_sampler(chain: Any) -> None:
        L.llama_sampler_free(chain)

    def close(self) -> None:
        if getattr(self, "ctx", None):
            L.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            L.llama_model_free(self.model)
            self.model = None
