"""Hugging Face llama checkpoints → GGUF, streamed tensor by tensor, as llama.cpp's converter writes them.

`convert` takes a checkpoint folder; `convert_source` takes anything shaped like
`converters.checkpoint.Checkpoint` (`.config`, `.names()`, `.tensors[name].dtype` and
`.shape`, `.f32(name)`), so a merge can be written straight into GGUF without an
intermediate checkpoint.

Every tensor's GGUF type and size is known from shapes alone, so the header, the
metadata and the tensor directory are written first (gguf-py's writer allows that),
then each tensor is loaded, permuted, converted, written and dropped: peak memory is
about two copies of the largest tensor in float32, whatever the model's size. The
file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import CatteryError
from app.progress import Progress, TensorCounter
from app.resources import require_disk
from converters.checkpoint import Checkpoint, CheckpointError

SYNC_EVERY = 256 * 1024 * 1024  # bytes written between syncs to disk


@dataclass
class ConvertReport:
    out: Path
    outtype: str
    n_tensors: int
    types: Counter[str]
    size: int  # bytes written
    seconds: float
    tokenizer: str  # "llama" (SentencePiece) or "gpt2" (BPE)
    pre_tokenizer: str
    pre_hash: str | None = None
    name: str = ""
    chat_template: str | None = None  # where the chat template came from, if any
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        from app.units import fmt_size

        types = ", ".join(f"{n} {t}" for t, n in self.types.most_common())
        tok = "SentencePiece" if self.tokenizer == "llama" else f"BPE, pre-tokenizer {self.pre_tokenizer}"
        if self.pre_hash:
            tok += f" (hash {self.pre_hash[:12]}…)"
        lines = [
            f"wrote {self.out}: {self.n_tensors} tensors ({types}), {fmt_size(self.size)} "
            f"in {self.seconds:.1f} s; tokenizer {tok}"
            + (f"; chat template from {self.chat_template}" if self.chat_template else "")
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def convert(
    src: Path,
    out: Path,
    *,
    outtype: str = "auto",
    pre_tokenizer: str | None = None,
    chat_format: str | None = None,
    progress: Progress | None = None,
) -> ConvertReport:
    """A checkpoint folder (config.json, safetensors, tokenizer) → one GGUF file."""
    src = Path(src)
    with Checkpoint.open(src) as ck:
        return convert_source(
            ck,
            src,
            out,
            outtype=outtype,
            pre_tokenizer=pre_tokenizer,
            chat_format=chat_format,
            progress=progress,
        )


def convert_source(
    source: Any,
    tokenizer_dir: Path,
    out: Path,
    *,
    outtype: str = "auto",
    pre_tokenizer: str | None = None,
    chat_format: str | None = None,
    progress: Progress | None = None,
    name: str | None = None,
    card_dir: Path | None = None,
) -> ConvertReport:
    """Any checkpoint-shaped source with the tokenizer files in `tokenizer_dir` → one GGUF file.

    `name` sets general.name; otherwise it comes from the model card in `card_dir`
    (default `tokenizer_dir`), its config.json or the folder's name, as llama.cpp's
    converter finds it.
    """
    import gguf

    from converters.config_check import check_shapes
    from converters.gguf_metadata import hparams, llama3_rope_factors, write_general, write_params
    from converters.gguf_tensors import PlannedTensor, file_type, plan_tensors, resolve_outtype
    from converters.gguf_tokenizer import load_vocab
    from converters.partials import clean_leftovers, hold_file

    started = time.monotonic()
    out = Path(out)
    tokenizer_dir = Path(tokenizer_dir)
    where = str(getattr(source, "folder", tokenizer_dir))
    hp = hparams(source.config, where)
    # the config against the tensors before anything is sized by it (the vocabulary above all)
    check_shapes(hp, {n: tuple(source.tensors[n].shape) for n in source.names()}, where)
    outtype = resolve_outtype(outtype.lower() if isinstance(outtype, str) else outtype, source)
    plan = plan_tensors(source, hp, outtype, where)
    embd = next(p for p in plan if p.name == "token_embd.weight")
    vocab = load_vocab(tokenizer_dir, hp["vocab_size"], pre_tokenizer=pre_tokenizer)
    if embd.shape[0] != len(vocab):
        raise CheckpointError(
            f"{where}: the embeddings have {embd.shape[0]} rows but the tokenizer and config give "
            f"{len(vocab)} tokens (vocab_size {hp['vocab_size']})"
        )
    template_from = "tokenizer_config.json" if vocab.special.chat_template else None
    if chat_format:
        from app.prompt.formats import get_format
        from converters.gguf_chat_format import chat_template

        vocab.special.chat_template = chat_template(get_format(chat_format))
        template_from = f"Cattery's {chat_format} format"

    factors = llama3_rope_factors(hp)
    if factors is not None:  # generated tensors come first, as in llama.cpp's converter
        rope = PlannedTensor("rope_freqs.weight", factors.shape, int(gguf.GGMLQuantizationType.F32), lambda: factors)
        plan.insert(0, rope)
    total = sum(p.nbytes for p in plan)
    _check_disk(out, total)
    clean_leftovers(out.parent)  # what a killed conversion into this folder left

    held = hold_file(out.parent, out.name)
    tmp = held.path
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        for p in plan:
            writer.add_tensor_info(p.name, p.shape, np.dtype(np.float32), p.nbytes, raw_dtype=p.qtype)
        n_params = sum(p.n_elements for p in plan)
        model_name = write_general(writer, card_dir or tokenizer_dir, name, n_params)
        write_params(writer, hp, int(file_type(outtype)))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        vocab.write(writer)
        if hp["vocab_size"] == 49152:
            # llama.cpp's converter turns BOS off for this vocabulary size (meant for Granite's
            # small models; the SmolLM2 GGUFs carry it too), overwriting the key in place
            from gguf.gguf_writer import GGUFValue

            writer.kv_data[0][gguf.Keys.Tokenizer.ADD_BOS] = GGUFValue(False, gguf.GGUFValueType.BOOL)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        _write_tensors(writer, plan, progress)
        writer.close()
        os.replace(tmp, out)
        held.release()
    except BaseException:
        writer.close()
        held.remove()
        raise
    types = Counter(gguf.GGMLQuantizationType(p.qtype).name for p in plan)
    return ConvertReport(
        out=out,
        outtype=outtype,
        n_tensors=len(plan),
        types=types,
        size=out.stat().st_size,
        seconds=time.monotonic() - started,
        tokenizer=vocab.model,
        pre_tokenizer=vocab.pre,
        pre_hash=vocab.pre_hash,
        name=model_name,
        chat_template=template_from,
        notes=vocab.notes,
    )


def _write_tensors(writer: Any, plan: list[Any], progress: Progress | None) -> None:
    """Convert each tensor while the previous one is written and flushed to disk.

    One tensor is in flight at a time, so memory stays bounded; the file is synced every
    SYNC_EVERY bytes from the writing thread, so the disk works while the CPU converts
    instead of all at the end.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    assert writer.fout is not None and len(writer.fout) == 1
    fout = writer.fout[0]
    unsynced = [0]
    sync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync

    def write(data: Any, last: bool) -> None:
        writer.write_tensor_data(data)
        unsynced[0] += data.nbytes
        if last or unsynced[0] >= SYNC_EVERY:
            fout.flush()
            sync(fout.fileno())
            unsynced[0] = 0

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gguf-write") as io:
        pending: Future[None] | None = None
        counter = TensorCounter(progress, [p.nbytes for p in plan])
        for i, p in enumerate(plan):
            data = p.data()
            if data.nbytes != p.nbytes:  # pragma: no cover - a planning bug, not a user error
                raise RuntimeError(f"{p.name}: {data.nbytes} bytes, planned {p.nbytes}")
            if pending is not None:
                pending.result()
                counter.step(plan[i - 1].name)
            pending = io.submit(write, data, i == len(plan) - 1)
            del data
        if pending is not None:
            pending.result()
            counter.step(plan[-1].name)


def _check_disk(out: Path, need: int) -> None:
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise CatteryError(f"{out}: the folder {folder} does not exist")
    require_disk(folder, need, str(out))
