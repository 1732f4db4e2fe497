"""llama.cpp's quantizer through its C API: the parameters struct, its reason for a failure,
and its own dry run, which says which type each tensor will get.

The dry run is what sizes a quantization and finds a missing importance matrix before
llama.cpp starts writing: llama_model_quantize with `dry_run` set chooses every tensor's
type by llama.cpp's own mixture rules (src/llama-quant.cpp) and logs one line per tensor,
without reading the weights (tens of milliseconds on the bundled model). Cattery keeps no
copy of those rules, so a newer llama.cpp's choices are the estimate's at once. The lines
are read as they come, from a thread, so that a model of thousands of tensors does not
outrun the log's memory of recent lines.
"""

from __future__ import annotations

import ctypes
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import CatteryError
from converters.imatrix import ImportanceMatrix
from converters.quant_types import (
    QuantType,
    TensorChoice,
    TensorEntry,
    TypeOptions,
    TypePlan,
    ggml_type_id,
    needs_imatrix,
)

# "[  3/ 272] blk.0.attn_k.weight - [ 576, 192, 1, 1], type = q4_1, size = 0.07 MiB -> 0.07 MiB (q5_0)"
# (no "->" and no type in parentheses: the tensor is copied as it is)
_DRY_LINE = re.compile(
    r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)\s+- \[.*?\], type =\s*(\S+), size = [^>]*?(?:->.*\((\S+)\))?\s*$"
)
_FALLBACKS = re.compile(r"(\d+) of \d+ tensor\(s\) required fallback quantization")


@dataclass
class NativeParams:
    """The params struct and everything its pointers point into (kept alive for the call)."""

    params: Any
    keep: list[Any] = field(default_factory=list)


def native_params(
    ftype: int,
    *,
    threads: int | None,
    allow_requantize: bool,
    opts: TypeOptions,
    imatrix: ImportanceMatrix | None,
) -> NativeParams:
    import llama_cpp as L
    import numpy as np

    from app.engine.native import set_fields

    params = L.llama_model_quantize_default_params()
    out = NativeParams(params)
    fields: dict[str, Any] = {
        "nthread": int(threads or 0),
        "ftype": ftype,
        "allow_requantize": allow_requantize,
        "quantize_output_tensor": not opts.leave_output_tensor,
        "only_copy": False,
        "pure": opts.pure,
        "keep_split": False,
        "dry_run": False,
    }
    if opts.output_tensor_type:
        fields["output_tensor_type"] = ggml_type_id(opts.output_tensor_type)
    if opts.token_embedding_type:
        fields["token_embedding_type"] = ggml_type_id(opts.token_embedding_type)
    if opts.overrides:
        arr = (L.llama_model_tensor_override * (len(opts.overrides) + 1))()
        for i, (pattern, type_name) in enumerate(opts.overrides):
            arr[i].pattern = pattern.encode()
            arr[i].type = ggml_type_id(type_name)
        arr[len(opts.overrides)].pattern = None
        out.keep.append(arr)
        fields["tt_overrides"] = ctypes.cast(arr, ctypes.POINTER(L.llama_model_tensor_override))
    if imatrix is not None:
        entries = [(name, np.ascontiguousarray(v, dtype=np.float32)) for name, v in imatrix.entries.items()]
        arr = (L.llama_model_imatrix_data * (len(entries) + 1))()
        for i, (name, values) in enumerate(entries):
            arr[i].name = name.encode()
            arr[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = values.size
        arr[len(entries)].name = None
        out.keep += [arr, entries]
        fields["imatrix"] = ctypes.cast(arr, ctypes.POINTER(L.llama_model_imatrix_data))
        kvs = _imatrix_kv_overrides(imatrix)
        out.keep.append(kvs)
        fields["kv_overrides"] = ctypes.cast(kvs, ctypes.POINTER(L.llama_model_kv_override))
    set_fields(params, **fields)
    return out


def imatrix_keys(imatrix: ImportanceMatrix) -> list[tuple[str, str | int]]:
    """The quantize.imatrix.* keys llama-quantize records, so the file says how it was made."""
    values: list[tuple[str, str | int]] = [("quantize.imatrix.file", str(imatrix.path)[:127])]
    if imatrix.datasets:
        values.append(("quantize.imatrix.dataset", imatrix.datasets[0][:127]))
    values.append(("quantize.imatrix.entries_count", len(imatrix.entries)))
    if imatrix.chunks:
        values.append(("quantize.imatrix.chunks_count", int(imatrix.chunks)))
    return values


def _imatrix_kv_overrides(imatrix: ImportanceMatrix) -> Any:
    import llama_cpp as L

    values = imatrix_keys(imatrix)
    arr = (L.llama_model_kv_override * (len(values) + 1))()
    for i, (key, value) in enumerate(values):
        arr[i].key = key.encode()
        if isinstance(value, str):
            arr[i].tag = L.LLAMA_KV_OVERRIDE_TYPE_STR
            arr[i].value.val_str = value.encode()[:127]
        else:
            arr[i].tag = L.LLAMA_KV_OVERRIDE_TYPE_INT
            arr[i].value.val_i64 = value
    arr[len(values)].key = b""
    return arr


def failure_reason(mark: int) -> str:
    from app.engine.llama_log import LOG

    lines = LOG.lines_since(mark)
    for line in reversed(lines):
        if "failed to quantize:" in line:
            return line.split("failed to quantize:", 1)[1].strip()
    errors = [e for e in LOG.errors_since(mark) if e.strip("= ")]
    return errors[-1] if errors else "see the llama.cpp log"


def dry_run(
    path: Path, qtype: QuantType, tensors: list[TensorEntry], opts: TypeOptions, imatrix: ImportanceMatrix | None
) -> TypePlan:
    """Every tensor's type under `qtype`, in the order llama.cpp writes them, from its dry run.

    Requantizing is allowed here (nothing is written): refusing it is the caller's check, with
    its own message.
    """
    import llama_cpp as L

    from app.engine.llama_log import LOG
    from app.engine.native import ensure_backend

    ensure_backend()
    native = native_params(qtype.ftype, threads=1, allow_requantize=True, opts=opts, imatrix=imatrix)
    native.params.dry_run = True
    mark = LOG.mark()
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            # llama.cpp opens no output in a dry run; the name is never created
            result["rc"] = L.llama_model_quantize(
                str(path).encode(), str(path.with_name(path.name + ".dry-run")).encode(), ctypes.byref(native.params)
            )
        except BaseException as exc:  # handed to the waiting thread
            result["exc"] = exc

    worker = threading.Thread(target=work, name="cattery-quantize-dry-run", daemon=True)
    worker.start()
    lines: list[str] = []
    seen = mark
    while True:
        alive = worker.is_alive()
        now = LOG.mark()
        lines += LOG.lines_since(seen)
        seen = now
        if not alive:
            break
        worker.join(0.005)
    if "exc" in result:
        raise result["exc"]
    if result.get("rc") != 0:
        # the words of a failed run: the dry run fails where the run would, only sooner
        raise CatteryError(f"{path}: llama.cpp could not quantize it to {qtype.name}: {failure_reason(mark)}")
    return _plan(path, qtype, tensors, lines)


def _plan(path: Path, qtype: QuantType, tensors: list[TensorEntry], lines: list[str]) -> TypePlan:
    by_name = {t.name: t for t in tensors}
    named: set[str] = set()
    plan = TypePlan(qtype)
    for line in lines:
        m = _DRY_LINE.match(line)
        if m is None:
            found = _FALLBACKS.search(line)
            if found:
                plan.fallbacks = int(found.group(1))
            continue
        t = by_name.get(m.group(3))
        if t is None or t.name in named:  # a line read twice (the log is polled while it grows)
            continue
        named.add(t.name)
        converted = m.group(5) is not None
        new = m.group(5).upper() if converted else t.ggml_type
        plan.tensors.append(
            TensorChoice(
                name=t.name,
                shape=t.shape,
                src_type=t.ggml_type,
                new_type=new,
                quantizable=converted,
                needs_imatrix=converted and needs_imatrix(t.name, new, qtype.name),
            )
        )
    if len(plan.tensors) != len(tensors):
        raise CatteryError(
            f"{path}: {qtype.name}: llama.cpp's dry run named {len(plan.tensors)} of the {len(tensors)} tensors; "
            "see the llama.cpp log"
        )
    return plan
