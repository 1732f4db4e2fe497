"""GGUF → quantized GGUF through llama.cpp's own quantizer (`llama_model_quantize`).

llama.cpp does the work; Cattery decides nothing about the bytes. What it adds:
every check it can make before llama.cpp starts writing (the type exists, the input
is a GGUF that is not already quantized, an importance matrix is there when the type
needs one and covers the tensors that need it, the disk has room for the result),
a size estimate from the tensor list (which type each tensor will get, from llama.cpp's
own dry run: converters/quant_native.py), progress from llama.cpp's own per-tensor log lines,
llama.cpp's log kept off the terminal with its failure turned into one line, and an
output that appears under its final name only when complete.

llama.cpp writes into a private folder beside the output (named and locked as
converters/partials.py says, so that one a killed run leaves is removed by the next);
the file is renamed into place when llama_model_quantize returns success. An error,
or Ctrl-C, removes the folder. llama.cpp itself cannot be stopped mid-file: after an
interruption its thread finds its folder gone, fails to write and stops; if the
process exits first, the operating system ends it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.errors import CatteryError, ModelFileError
from app.progress import Progress
from app.resources import require_disk
from converters.imatrix import ImportanceMatrix, read_imatrix
from converters.partials import clean_leftovers, hold_folder
from converters.quant_native import NativeParams, dry_run, failure_reason, imatrix_keys, native_params
from converters.quant_types import (
    ModelShape,
    QuantType,
    TensorEntry,
    TypeOptions,
    TypePlan,
    is_quantized,
    lookup,
    tensor_bytes,
)

ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT: llama.cpp pads every tensor's data to it
_TENSOR_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")


# -- the source model ----------------------------------------------------------------


@dataclass
class SourceModel:
    path: Path
    shape: ModelShape
    tensors: list[TensorEntry]
    n_params: int
    header_bytes: int  # metadata + tensor directory, as the output will carry them
    size: int  # bytes of all input files
    fields: dict[str, Any]


def _split_files(path: Path, count: int) -> list[Path]:
    m = re.match(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$", path.name)
    if not m or int(m.group(2)) != 1:
        raise ModelFileError(f"{path}: a split model must be given by its first file (…-00001-of-{count:05d}.gguf)")
    return [path.with_name(f"{m.group(1)}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def _kv_size(key: str, value: Any) -> int:
    """Bytes of one metadata entry (key, type, value) for the scalar and string keys quantizing adds."""
    body = 8 + len(value.encode()) if isinstance(value, str) else 4
    return 8 + len(key.encode()) + 4 + body


def read_source(path: Path) -> SourceModel:
    from app.engine.gguf_fields import Fields
    from app.engine.gguf_header import read_header
    from app.engine.metadata import LLAMA_MAX_EXPERTS, LLAMA_MAX_LAYERS, MAX_HEADS, check_gguf_magic, check_loadable

    check_gguf_magic(path)
    try:
        with path.open("rb") as f:
            header = read_header(f, str(path))
            fields = Fields(header, f)
            split_count = fields.integer("split.count", 0, 65535) or 1  # a u16 in llama.cpp
            files = _split_files(path, split_count) if split_count > 1 else [path]
            arch = fields.text("general.architecture") or ""
            if not arch:
                raise ModelFileError(
                    f"{path}: no general.architecture in its metadata: not a model llama.cpp can quantize"
                )
            # llama.cpp's quantizer loads the hyperparameters as a model load does: the same checks first
            tokens = fields.strings("tokenizer.ggml.tokens")
            check_loadable(fields, arch, len(tokens) if tokens is not None else None)

            # per-layer head counts: layer 0's, as llama.cpp's quantizer takes them (hparams.n_gqa())
            def heads(key: str) -> int:
                return fields.integer(f"{arch}.{key}", 0, MAX_HEADS, per_layer=True, pick=lambda v: v[0]) or 0

            n_head = heads("attention.head_count")
            shape = ModelShape(
                arch=arch,
                n_layer=fields.integer(f"{arch}.block_count", 0, LLAMA_MAX_LAYERS) or 0,
                n_head=n_head,
                n_head_kv=heads("attention.head_count_kv") or n_head,
                n_expert=fields.integer(f"{arch}.expert_count", 0, LLAMA_MAX_EXPERTS) or 0,
            )
        tensors = list(header.tensors)
        infos = header.info_end  # the header's bytes without its padding: the output pads its own
        for other in files[1:]:
            if not other.exists():
                raise ModelFileError(f"{other}: this part of the split model is missing")
            with other.open("rb") as f:
                more = read_header(f, str(other)).tensors
            tensors += more
            infos += sum(8 + len(t.name.encode()) + 4 + 8 * len(t.shape) + 4 + 8 for t in more)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read: {exc.strerror}") from None
    entries = [TensorEntry(t.name, tuple(int(d) for d in t.shape), t.type_name) for t in tensors]
    # llama.cpp adds these two keys and drops the split ones
    for key, value in (("general.quantization_version", 0), ("general.file_type", 0)):
        if header.get(key) is None:
            infos += _kv_size(key, value)
    for key in ("split.no", "split.count", "split.tensors.count"):
        if header.get(key) is not None:
            infos -= 8 + len(key) + 4 + 4
    return SourceModel(
        path=path,
        shape=shape,
        tensors=entries,
        n_params=sum(t.n_elements for t in tensors),
        header_bytes=infos,
        size=sum(p.stat().st_size for p in files),
        fields=header.fields,
    )


# -- estimates ------------------------------------------------------------------------


@dataclass
class QuantEstimate:
    """What one `--type` will make of the source: each tensor's type and the file's size."""

    qtype: QuantType
    plan: TypePlan
    size: int
    n_params: int
    source_size: int

    @property
    def bpw(self) -> float:
        return self.size * 8 / self.n_params if self.n_params else 0.0

    @property
    def needs_imatrix(self) -> bool:
        return self.plan.needs_imatrix

    def mix(self) -> str:
        counts = self.plan.type_counts()
        return ", ".join(f"{name} ×{n}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def summary(self) -> str:
        from app.units import fmt_size

        note = "; needs an importance matrix (--imatrix)" if self.needs_imatrix else ""
        fell = f"; {self.plan.fallbacks} tensors in a fallback type (rows too short)" if self.plan.fallbacks else ""
        return (
            f"{self.qtype.name}: about {fmt_size(self.size)} ({self.bpw:.2f} bpw, from {fmt_size(self.source_size)}): "
            f"{self.mix()}{fell}{note}"
        )


def _pad(n: int) -> int:
    return n + (-n % ALIGNMENT)


def estimate(
    src: Path | SourceModel,
    qtype: str | QuantType,
    options: TypeOptions | None = None,
    *,
    imatrix: Path | ImportanceMatrix | None = None,
) -> QuantEstimate:
    """The output's size from the tensor list: each tensor's type as llama.cpp's dry run chooses it,
    the types' block sizes (gguf-py's GGML_QUANT_SIZES) and llama.cpp's padding."""
    source = src if isinstance(src, SourceModel) else read_source(Path(src))
    qt = qtype if isinstance(qtype, QuantType) else lookup(qtype)
    imat = read_imatrix(Path(imatrix)) if isinstance(imatrix, str | Path) else imatrix
    opts = replace(options or TypeOptions(), has_imatrix=imat is not None)
    plan = dry_run(source.path, qt, source.tensors, opts, imat)
    header = source.header_bytes
    if imat is not None:
        header += sum(_kv_size(key, value) for key, value in imatrix_keys(imat))
    size = _pad(header)
    for t in plan.tensors:
        size += _pad(tensor_bytes(t.new_type, t.shape))
    return QuantEstimate(qt, plan, size, source.n_params, source.size)


def input_sizes(source: SourceModel) -> dict[str, int]:
    """Each input tensor's bytes by name: what progress counts as llama.cpp goes through them."""
    return {t.name: tensor_bytes(t.ggml_type, t.shape) for t in source.tensors}


# -- checks before starting -----------------------------------------------------------


def check_requantize(source: SourceModel, est: QuantEstimate, allow: bool) -> None:
    if allow:
        return
    for t in est.plan.tensors:
        if t.changes and is_quantized(t.src_type):
            raise CatteryError(
                f"{source.path}: {t.name} is already quantized ({t.src_type}); quantize from an F32, F16 or "
                "BF16 GGUF, or pass --allow-requantize (which loses quality)"
            )


def check_imatrix(source: SourceModel, est: QuantEstimate, imatrix: ImportanceMatrix | None) -> None:
    needing = [t for t in est.plan.tensors if t.changes and t.needs_imatrix]
    if imatrix is None:
        if needing:
            t = needing[0]
            raise CatteryError(
                f"{source.path}: {est.qtype.name} needs an importance matrix (--imatrix FILE, made by llama.cpp's "
                f"llama-imatrix): {t.name} would be {t.new_type}"
            )
        return
    for t in est.plan.tensors:
        if not t.changes:
            continue
        values = imatrix.entries.get(t.name)
        if values is None:
            if t.needs_imatrix:
                raise CatteryError(
                    f"{imatrix.path}: no entry for {t.name}, which {est.qtype.name} makes {t.new_type}: "
                    "an importance matrix of another model?"
                )
            continue
        expected = t.shape[0] * (t.shape[2] if len(t.shape) > 2 else 1)
        if values.size != expected and t.name not in ("token_embd.weight", "per_layer_token_embd.weight"):
            raise CatteryError(
                f"{imatrix.path}: entry {t.name} has {values.size} values, the tensor needs {expected}: "
                "an importance matrix of another model?"
            )


# -- running it -------------------------------------------------------------------------


@dataclass
class QuantReport:
    src: Path
    out: Path
    qtype: str
    size: int
    estimated_size: int
    n_params: int
    seconds: float
    types: dict[str, int]

    @property
    def bpw(self) -> float:
        return self.size * 8 / self.n_params if self.n_params else 0.0

    def summary(self) -> str:
        from app.units import fmt_size

        mix = ", ".join(f"{k} ×{v}" for k, v in sorted(self.types.items(), key=lambda kv: (-kv[1], kv[0])))
        return (
            f"wrote {self.out} ({self.qtype}, {fmt_size(self.size)}, {self.bpw:.2f} bpw: {mix}) in {self.seconds:.1f} s"
        )


def _run_native(
    src: Path, tmp_out: Path, native: NativeParams, workdir: Path, progress: Progress | None, sizes: dict[str, int]
) -> str:
    """llama_model_quantize on its own thread, so that Ctrl-C and progress reach Python meanwhile.

    llama.cpp logs each tensor as it finishes; `sizes` (input bytes by name) turns that
    into bytes done. Returns "" on success, else llama.cpp's reason.
    """
    import llama_cpp as L

    from app.engine.llama_log import LOG

    mark = LOG.mark()
    result: dict[str, Any] = {}
    abandoned = threading.Event()

    def work() -> None:
        try:
            result["rc"] = L.llama_model_quantize(str(src).encode(), str(tmp_out).encode(), ctypes.byref(native.params))
        except BaseException as exc:  # handed to the waiting thread
            result["exc"] = exc
        finally:
            if abandoned.is_set():
                shutil.rmtree(workdir, ignore_errors=True)

    worker = threading.Thread(target=work, name="cattery-quantize", daemon=True)
    worker.start()
    seen, done, nbytes, total_bytes = mark, 0, 0, sum(sizes.values())
    try:
        while worker.is_alive():
            worker.join(0.1)
            now = LOG.mark()
            for line in LOG.lines_since(seen):
                m = _TENSOR_LINE.match(line)
                if m and int(m.group(1)) > done:
                    done = int(m.group(1))
                    nbytes += sizes.get(m.group(3), 0)
                    if progress is not None:
                        progress(done, int(m.group(2)), m.group(3), nbytes, total_bytes)
            seen = now
    except BaseException:
        abandoned.set()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    if "exc" in result:
        raise result["exc"]
    return "" if result.get("rc") == 0 else failure_reason(mark)


def _output_types(path: Path) -> dict[str, int]:
    from app.engine.gguf_header import read_header

    with path.open("rb") as f:
        return dict(Counter(t.type_name for t in read_header(f).tensors))


def quantize(
    src: Path,
    out: Path,
    qtype: str,
    *,
    options: TypeOptions | None = None,
    threads: int | None = None,
    imatrix: Path | ImportanceMatrix | None = None,
    progress: Progress | None = None,
    allow_requantize: bool = False,
) -> QuantReport:
    """Quantize `src` to `out` as `qtype` (a llama-quantize type name: Q4_K_M, IQ4_XS, …).

    `progress(done, total, tensor)` is called as llama.cpp finishes each tensor; an exception
    it raises (as KeyboardInterrupt does) cancels: nothing is left under `out`'s name.
    """
    from app.engine.native import ensure_backend

    src, out = Path(src), Path(out)
    qt = lookup(qtype)
    source = read_source(src)
    imat = read_imatrix(Path(imatrix)) if isinstance(imatrix, str | Path) else imatrix
    opts = replace(options or TypeOptions(), has_imatrix=imat is not None)
    est = estimate(source, qt, opts, imatrix=imat)
    check_requantize(source, est, allow_requantize)
    check_imatrix(source, est, imat)
    if out.exists() and out.is_dir():
        raise CatteryError(f"{out}: is a folder; give the output file's name")
    with contextlib.suppress(OSError):
        if out.exists() and out.samefile(src):
            raise CatteryError(f"{out}: the output would overwrite the input")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CatteryError(f"{ancestor}: not a folder, so {out} cannot be written")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CatteryError(f"{out.parent}: cannot make the output folder: {exc.strerror}") from None
    require_disk(out.parent, est.size, out.name)
    native = native_params(qt.ftype, threads=threads, allow_requantize=allow_requantize, opts=opts, imatrix=imat)
    ensure_backend()
    clean_leftovers(out.parent)  # what a killed quantization into this folder left
    try:
        held = hold_folder(out.parent, out.name, unique=True)
    except OSError as exc:
        raise CatteryError(f"{out.parent}: cannot write there: {exc.strerror}") from None
    workdir = held.path
    tmp_out = workdir / out.name
    start = time.monotonic()
    try:
        reason = _run_native(src, tmp_out, native, workdir, progress, input_sizes(source))
        if reason:
            raise CatteryError(f"{src}: llama.cpp could not quantize it to {qt.name}: {reason}")
        if not tmp_out.exists():
            raise CatteryError(f"{src}: llama.cpp reported success but wrote no file")
        os.replace(tmp_out, out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        held.release()
    seconds = time.monotonic() - start
    return QuantReport(
        src=src,
        out=out,
        qtype=qt.name,
        size=out.stat().st_size,
        estimated_size=est.size,
        n_params=source.n_params,
        seconds=seconds,
        types=_output_types(out),
    )


# -- output names -----------------------------------------------------------------------

_TYPE_SUFFIX = re.compile(r"[-._](f32|f16|fp16|fp32|bf16|q\d(_[a-z0-9]+)*|iq\d(_[a-z0-9]+)*|tq\d_\d|mxfp4\w*)$", re.I)


def output_stem(src: Path) -> str:
    """The input's name without `.gguf` and without the type it ends with (`llama-13b-f16` → `llama-13b`)."""
    stem = src.name.removesuffix(".gguf")
    m = re.match(r"^(.*)-\d{5}-of-\d{5}$", stem)
    if m:
        stem = m.group(1)
    return _TYPE_SUFFIX.sub("", stem) or stem


def output_paths(src: Path, output: Path | None, qtypes: Sequence[QuantType]) -> list[Path]:
    """One file per type: `-o` is that file for one type, a folder (`STEM.TYPE.gguf` inside) for several.

    Without `-o` the files go beside the input, as llama-quantize puts them.
    """
    if output is None:
        return [src.parent / f"{output_stem(src)}.{qt.name}.gguf" for qt in qtypes]
    as_folder = len(qtypes) > 1 or output.is_dir() or str(output).endswith(os.sep)
    if not as_folder:
        return [output]
    if output.suffix.lower() == ".gguf" and not output.is_dir():
        raise CatteryError(f"{output}: with several --type, -o names a folder (each type gets its own file in it)")
    if output.exists() and not output.is_dir():
        raise CatteryError(f"{output}: not a folder")
    stem = output_stem(src)
    return [output / f"{stem}.{qt.name}.gguf" for qt in qtypes]
