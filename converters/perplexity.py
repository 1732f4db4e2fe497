"""Perplexity over a text file, computed the way llama.cpp's `llama-perplexity` computes it.

So that numbers can be compared with the ones model cards quote (and between quants
of one model), every step follows tools/perplexity/perplexity.cpp:

- the whole text is tokenized once, with the model's BOS when its vocabulary adds
  one and with special-token text left as plain text;
- it is cut into non-overlapping chunks of n_ctx tokens (a tail shorter than a chunk
  is dropped; at least two chunks are needed);
- each chunk is evaluated from an empty KV cache, positions 0 … n_ctx-1, its first
  token replaced by BOS when the vocabulary adds BOS (a vocabulary that also adds EOS,
  which the tool refuses, is scored without that EOS);
- only the second half is scored: the logits at positions n_ctx/2 … n_ctx-2 predict
  the tokens after them, so every scored token has at least n_ctx/2 tokens of context;
- PPL = exp(mean NLL), and the ± is the tool's: PPL · sqrt((E[nll²] − E[nll]²) / (N − 1)).

llama.cpp is driven directly (a context sized for one chunk, batches that ask for
logits only where they are scored); the softmax runs in numpy, in float64 sums over
float32 exponentials as the tool's does.
"""

from __future__ import annotations

import ctypes
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.errors import CatteryError, ModelFileError
from app.progress import Progress

MAX_BATCH = 512


@dataclass
class PerplexityReport:
    model: Path
    n_ctx: int
    tokens: int  # tokens in the whole text
    chunks: int  # chunks evaluated
    scored: int  # tokens whose probability was counted
    ppl: float
    error: float  # the ± llama.cpp prints
    seconds: float
    running: list[float] = field(default_factory=list)  # PPL after each chunk, as the tool prints [1]…,[2]…
    warning: str | None = None
    placement: str = "CPU"  # where the layers ran, in the words `cattery chat` uses
    gpu_layers: int = 0  # layers llama.cpp offloaded

    def summary(self) -> str:
        return (
            f"PPL = {self.ppl:.4f} +/- {self.error:.5f} ({self.chunks} chunks of {self.n_ctx} tokens, "
            f"{self.scored} tokens scored, {self.tokens} in the text; {self.placement}; {self.seconds:.1f} s)"
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model"] = str(self.model)
        return out


class _Scorer:
    """One model and a context for one chunk, freed by `close`."""

    def __init__(self, path: Path, n_ctx: int, threads: int | None, gpu_layers: int | None = None) -> None:
        import llama_cpp as L

        from app.engine.llama_log import LOG
        from app.engine.metadata import read_model_info
        from app.engine.native import (
            Vocab,
            ensure_backend,
            load_model,
            new_context,
            offload_supported,
            offloaded_layers,
        )
        from app.engine.options import LoadOptions, round_ctx
        from app.engine.placement import choose_gpu_layers

        ensure_backend()
        self.L = L
        # `--gpu-layers` as `cattery chat` resolves it (auto included), for a context of one chunk
        info = read_model_info(path)
        options = LoadOptions(ctx=round_ctx(n_ctx), batch=min(n_ctx, MAX_BATCH), gpu_layers=gpu_layers)
        self.choice = choose_gpu_layers(info, round_ctx(n_ctx), options, offload=offload_supported())
        mark = LOG.mark()
        self.ctx = None
        self.batch = None
        self.model = load_model(path, mark, n_gpu_layers=self.choice.gpu_layers)
        self.vocab = Vocab(self.model)
        self.n_vocab = self.vocab.n_vocab
        self.n_ctx_train = int(L.llama_model_n_ctx_train(self.model))
        self.n_batch = min(n_ctx, MAX_BATCH)
        n_threads = threads or os.cpu_count() or 1
        try:
            self.ctx = new_context(
                self.model,
                path,
                mark,
                f"a context of {n_ctx}",
                n_ctx=round_ctx(n_ctx),
                n_batch=self.n_batch,
                n_ubatch=self.n_batch,
                n_seq_max=1,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                no_perf=True,
            )
        except ModelFileError:
            self.close()
            raise
        self.memory = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)
        n_layer = int(L.llama_model_n_layer(self.model))
        self.gpu_layers = offloaded_layers(LOG.lines_since(mark), self.choice.gpu_layers, n_layer)
        self.placement = "CPU" if self.gpu_layers <= 0 else f"GPU {self.gpu_layers}/{n_layer + 1} layers"

    def tokenize(self, text: str) -> list[int]:
        # common_tokenize(ctx, text, add_special=true): BOS if the model adds one, special text not parsed
        tokens = self.vocab.tokenize(text, add_special=True, parse_special=False)
        eos = int(self.L.llama_vocab_eos(self.vocab.vocab))
        if self.L.llama_vocab_get_add_eos(self.vocab.vocab) and tokens and tokens[-1] == eos:
            tokens.pop()  # llama-perplexity refuses such vocabularies; scoring without the EOS is what it means
        return tokens

    def chunk_nll(self, chunk: list[int], first: int) -> list[float]:
        """NLL of chunk[first+1:] from a fresh cache, as perplexity.cpp's perplexity() scores one chunk."""
        import numpy as np

        from app.engine.native import DECODE_OK

        L = self.L
        n_ctx = len(chunk)
        L.llama_memory_clear(self.memory, True)
        tokens = list(chunk)
        if self.vocab.add_bos:
            tokens[0] = self.vocab.bos_token
        out: list[float] = []
        b = self.batch
        for start in range(0, n_ctx, self.n_batch):
            size = min(self.n_batch, n_ctx - start)
            n_out = 0
            for k in range(size):
                pos = start + k
                b.token[k] = tokens[pos]
                b.pos[k] = pos
                b.n_seq_id[k] = 1
                b.seq_id[k][0] = 0
                wanted = pos >= first
                b.logits[k] = wanted
                n_out += wanted
            b.n_tokens = size
            status = L.llama_decode(self.ctx, b)
            if status != DECODE_OK:
                raise CatteryError(f"llama.cpp failed to evaluate a chunk (llama_decode returned {status})")
            if not n_out:
                continue
            ptr = L.llama_get_logits(self.ctx)
            floats = ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float))
            logits = np.ctypeslib.as_array(floats, shape=(n_out, self.n_vocab))
            first_pos = max(start, first)
            for r in range(n_out):
                pos = first_pos + r
                if pos + 1 >= n_ctx:
                    break
                row = logits[r]
                top = float(row.max())
                total = float(np.exp(row - np.float32(top), dtype=np.float32).sum(dtype=np.float64))
                out.append(top + math.log(total) - float(row[chunk[pos + 1]]))
        return out

    def close(self) -> None:
        L = self.L
        if self.batch is not None:
            L.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            L.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            L.llama_model_free(self.model)
            self.model = None


def perplexity(
    model: Path,
    text: str,
    *,
    n_ctx: int = 512,
    threads: int | None = None,
    chunks: int | None = None,
    progress: Progress | None = None,
    gpu_layers: int | None = None,
) -> PerplexityReport:
    """llama-perplexity's number for `model` over `text` with chunks of `n_ctx` tokens."""
    from app.engine.metadata import check_gguf_magic

    if n_ctx < 8:
        raise CatteryError(f"--ctx {n_ctx}: a chunk needs at least 8 tokens")
    if chunks is not None and chunks < 1:
        raise CatteryError(f"--chunks {chunks}: at least one chunk")
    check_gguf_magic(model)
    start_time = time.monotonic()
    scorer = _Scorer(model, n_ctx, threads, gpu_layers)
    try:
        tokens = scorer.tokenize(text)
        if len(tokens) < 2 * n_ctx:
            raise CatteryError(
                f"the text has {len(tokens)} tokens; perplexity with a context of {n_ctx} needs at least "
                f"{2 * n_ctx} (two chunks): give a longer text or a smaller --ctx"
            )
        n_chunk = len(tokens) // n_ctx
        if chunks is not None:
            n_chunk = min(n_chunk, chunks)
        first = n_ctx // 2
        nll = nll2 = 0.0
        count = 0
        running: list[float] = []
        for i in range(n_chunk):
            values = scorer.chunk_nll(tokens[i * n_ctx : (i + 1) * n_ctx], first)
            nll += sum(values)
            nll2 += sum(v * v for v in values)
            count += len(values)
            running.append(math.exp(nll / count))
            if progress is not None:
                progress(i + 1, n_chunk, f"PPL {running[-1]:.4f}")
        warnings = list(scorer.choice.warnings)
        if n_ctx > scorer.n_ctx_train > 0:
            warnings.append(f"the model was trained on {scorer.n_ctx_train} tokens of context, {n_ctx} asked for")
        warning = "; ".join(warnings) or None
    finally:
        scorer.close()
    mean = nll / count
    ppl = math.exp(mean)
    var = nll2 / count - mean * mean
    error = math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else 0.0
    return PerplexityReport(
        model=model,
        n_ctx=n_ctx,
        tokens=len(tokens),
        chunks=n_chunk,
        scored=count,
        ppl=ppl,
        error=error,
        seconds=time.monotonic() - start_time,
        running=running,
        warning=warning,
        placement=scorer.placement,
        gpu_layers=scorer.gpu_layers,
    )
