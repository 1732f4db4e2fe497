"""Quantization through llama.cpp's C API, importance matrices, and perplexity as llama.cpp computes it.

Two real inputs, each made once for the module: the bundled SmolLM2 dequantized to F32
(576-wide rows: most k-quant tensors there take llama.cpp's fallback types), and a
small random llama written here in F16 with rows of 256 and 768 (every k-quant fits,
so the Q4_K_M mixture shows as llama.cpp defines it) and a small SentencePiece-style
vocabulary, so llama.cpp loads and runs it too.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from app.engine.engine import Engine
from app.engine.gguf_header import read_header
from app.engine.llama_log import LOG
from app.engine.native import ensure_backend
from app.engine.options import LoadOptions, SamplerSettings
from app.errors import CatteryError
from app.resources import require_disk
from converters import quantize as Q
from converters.imatrix import read_imatrix
from converters.perplexity import perplexity
from converters.quant_native import native_params
from converters.quant_types import TypeOptions, all_types, lookup, tensor_bytes
from tests.conftest import DEADLINE, ROOT, run_cattery
from tests.gguf_files import dequantized_copy, split_copy, write_gguf

TINY_LAYERS, TINY_EMBD, TINY_FF, TINY_HEADS, TINY_KV_HEADS, TINY_VOCAB = 8, 256, 768, 4, 2, 512
TEXT_FILE = ROOT / "README.md"  # a real English text of a few thousand tokens
PPL_CTX = 128


# -- fixtures ---------------------------------------------------------------------------


def write_tiny_llama(path: Path) -> Path:
    """A random-weight llama (untied output, GQA 2) with a byte-fallback SentencePiece vocabulary."""
    import gguf

    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny test llama")
    w.add_context_length(2048)
    w.add_block_count(TINY_LAYERS)
    w.add_embedding_length(TINY_EMBD)
    w.add_feed_forward_length(TINY_FF)
    w.add_head_count(TINY_HEADS)
    w.add_head_count_kv(TINY_KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(TINY_EMBD // TINY_HEADS)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + ["▁"]
    tokens += [f"▁{c}" for c in letters] + list(letters)
    tokens += [f"▁{a}{b}" for a in letters for b in letters][: TINY_VOCAB - len(tokens)]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)

    def weight(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float16)

    ones = np.ones(TINY_EMBD, dtype=np.float32)
    kv = TINY_EMBD // TINY_HEADS * TINY_KV_HEADS
    w.add_tensor("token_embd.weight", weight(TINY_VOCAB, TINY_EMBD))
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", weight(TINY_VOCAB, TINY_EMBD))
    for i in range(TINY_LAYERS):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones)
        w.add_tensor(p + "attn_q.weight", weight(TINY_EMBD, TINY_EMBD))
        w.add_tensor(p + "attn_k.weight", weight(kv, TINY_EMBD))
        w.add_tensor(p + "attn_v.weight", weight(kv, TINY_EMBD))
        w.add_tensor(p + "attn_output.weight", weight(TINY_EMBD, TINY_EMBD))
        w.add_tensor(p + "ffn_norm.weight", ones)
        w.add_tensor(p + "ffn_gate.weight", weight(TINY_FF, TINY_EMBD))
        w.add_tensor(p + "ffn_up.weight", weight(TINY_FF, TINY_EMBD))
        w.add_tensor(p + "ffn_down.weight", weight(TINY_EMBD, TINY_FF))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quantize")


@pytest.fixture(scope="module")
def f32_model(model_path: Path, work: Path) -> Path:
    return dequantized_copy(model_path, work / "smollm2-135m-F32.gguf")


@pytest.fixture(scope="module")
def tiny(work: Path) -> Path:
    return write_tiny_llama(work / "tiny-F16.gguf")


@pytest.fixture(scope="module")
def q4km(f32_model: Path, work: Path) -> Q.QuantReport:
    return Q.quantize(f32_model, work / "smollm2-Q4_K_M.gguf", "Q4_K_M", threads=2)


@pytest.fixture(scope="module")
def q2k(f32_model: Path, work: Path) -> Q.QuantReport:
    return Q.quantize(f32_model, work / "smollm2-Q2_K.gguf", "Q2_K", threads=2)


@pytest.fixture(scope="module")
def text() -> str:
    return TEXT_FILE.read_text(encoding="utf-8")


# -- helpers ------------------------------------------------------------------------------


def tensor_types(path: Path) -> dict[str, str]:
    with path.open("rb") as f:
        return {t.name: t.type_name for t in read_header(f).tensors}


def file_type(path: Path) -> int:
    with path.open("rb") as f:
        return int(read_header(f).get("general.file_type"))


def more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def layer_of(name: str) -> int:
    return int(name.split(".")[1])


def greedy_text(path: Path) -> str:
    eng = Engine()
    try:
        eng.load(path, LoadOptions(ctx=256, threads=2))
        return eng.generate(
            "The cat sat on", SamplerSettings(temperature=0.0, repeat_penalty=1.0, max_tokens=8)
        ).result()
    finally:
        eng.close()


_DRY_LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[.*?\], type =\s*(\S+), (?:.*\((\S+)\))?")


def llama_dry_run(src: Path, qtype: str, imatrix: Path | None = None, **options: object) -> tuple[int, dict, bool]:
    """llama.cpp's own dry run: (status, tensor → type it would get, whether it says an imatrix is needed)."""
    import llama_cpp as L

    ensure_backend()
    qt = lookup(qtype)
    imat = read_imatrix(imatrix) if imatrix else None
    opts = dataclasses.replace(TypeOptions.parse(**options), has_imatrix=imat is not None)  # type: ignore[arg-type]
    native = native_params(qt.ftype, threads=1, allow_requantize=False, opts=opts, imatrix=imat)
    native.params.dry_run = True
    mark = LOG.mark()
    rc = L.llama_model_quantize(str(src).encode(), str(src.with_suffix(".none")).encode(), ctypes.byref(native.params))
    types, needs = {}, False
    for line in LOG.lines_since(mark):
        m = _DRY_LINE.match(line)
        if m:
            types[m.group(1)] = (m.group(3) or m.group(2)).upper()
        needs = needs or "will require an imatrix" in line
    return int(rc), types, needs


def write_dat_imatrix(path: Path, entries: dict[str, np.ndarray], ncall: int = 10, dataset: str = "wiki.txt") -> Path:
    """llama-imatrix's legacy format: per entry the mean squares times ncall (save_imatrix_legacy)."""
    with path.open("wb") as f:
        f.write(struct.pack("<i", len(entries)))
        for name, values in entries.items():
            raw = name.encode()
            f.write(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, values.size))
            f.write((values * ncall).astype("<f4").tobytes())
        f.write(struct.pack("<i", ncall))
        f.write(struct.pack("<i", len(dataset)) + dataset.encode())
    return path


def write_gguf_imatrix(path: Path, sums: dict[str, np.ndarray], counts: dict[str, np.ndarray]) -> Path:
    """llama-imatrix's GGUF format: NAME.in_sum2 [n_mat, ne0] and NAME.counts [n_mat, 1], F32."""
    import gguf

    w = gguf.GGUFWriter(str(path), "imatrix")
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["wiki.txt"])
    w.add_uint32("imatrix.chunk_count", 12)
    w.add_uint32("imatrix.chunk_size", 512)
    for name in sorted(sums):
        w.add_tensor(f"{name}.in_sum2", sums[name].astype(np.float32))
        w.add_tensor(f"{name}.counts", counts[name].astype(np.float32).reshape(-1, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_imatrix_values(src: Path, seed: int = 3) -> dict[str, np.ndarray]:
    """Positive values of the right length (the row length) for every matrix in the blocks."""
    rng = np.random.default_rng(seed)
    with src.open("rb") as f:
        tensors = read_header(f).tensors
    return {
        t.name: (rng.random(t.shape[0]) + 0.1).astype(np.float32)
        for t in tensors
        if t.name.startswith("blk.") and len(t.shape) == 2
    }


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("cattery: error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]


# -- the table of types ---------------------------------------------------------------------


def test_every_llama_ftype_is_offered_or_known_refused(tiny: Path) -> None:
    import llama_cpp

    from converters.quant_types import _data

    header = Path(llama_cpp.__file__).parent.parent / "include" / "llama.h"
    enum = header.read_text().split("enum llama_ftype {", 1)[1].split("};", 1)[0]
    in_header = {
        m.group(1).removeprefix("MOSTLY_").removeprefix("ALL_"): int(m.group(2))
        for m in re.finditer(r"^\s*LLAMA_FTYPE_(\w+)\s*=\s*(\d+)", enum, re.M)
    }
    in_header.pop("GUESSED")
    offered = {qt.name: qt.ftype for qt in all_types()}
    refused = _data()["not_offered"]
    assert {**offered, **refused} == in_header
    import llama_cpp as L

    ensure_backend()
    for name, ftype in refused.items():  # what the table leaves out, llama.cpp does refuse
        params = L.llama_model_quantize_default_params()
        params.ftype, params.dry_run = ftype, True
        mark = LOG.mark()
        assert L.llama_model_quantize(str(tiny).encode(), b"unused.gguf", ctypes.byref(params)) != 0, name
        assert any("invalid output file type" in line for line in LOG.lines_since(mark))
    assert lookup("q4_k").name == "Q4_K_M" and lookup("15").name == "Q4_K_M" and lookup(" iq4_xs ").name == "IQ4_XS"
    with pytest.raises(CatteryError, match="Q4_K_S, Q4_K_M"):
        lookup("Q4_K_Q")


def test_the_estimated_types_are_llama_cpps_for_every_type(tiny: Path, f32_model: Path, work: Path) -> None:
    """Which tensor gets which type, and whether an imatrix is needed, against llama.cpp's own dry run."""
    imatrix = write_dat_imatrix(work / "tiny-dry.imatrix.dat", tiny_imatrix_values(tiny))
    cases: list[tuple[Path, str, dict]] = [(tiny, qt.name, {}) for qt in all_types()]
    cases += [(f32_model, qt.name, {}) for qt in all_types()]
    cases += [
        (tiny, "Q4_K_M", {"pure": True}),
        (tiny, "Q4_K_M", {"leave_output_tensor": True}),
        (tiny, "Q4_K_M", {"tensor_types": [r"blk\.0\.ffn_down=q5_k", "attn_q=q8_0"]}),  # skips a counted layer
        (tiny, "Q3_K_M", {"output_tensor_type": "q8_0", "token_embedding_type": "q5_1"}),
        (tiny, "IQ3_XXS", {"imatrix": imatrix}),
        (tiny, "Q4_0", {"imatrix": imatrix}),
        (tiny, "IQ4_XS", {"imatrix": imatrix}),
        (f32_model, "Q4_K_M", {"pure": True}),
    ]
    checked = 0
    for src, qtype, options in cases:
        flags = {k: v for k, v in options.items() if k != "imatrix"}
        rc, theirs, they_need = llama_dry_run(src, qtype, options.get("imatrix"), **flags)
        try:
            est = Q.estimate(src, qtype, TypeOptions.parse(**flags), imatrix=options.get("imatrix"))
        except CatteryError:
            assert rc != 0, f"{src.name} {qtype}: refused here, made by llama.cpp"
            continue
        assert rc == 0, f"{src.name} {qtype}: llama.cpp refused it"
        ours = {t.name: t.new_type for t in est.plan.tensors}
        assert ours == theirs, f"{src.name} {qtype} {options}"
        if "imatrix" not in options:  # with one, llama.cpp has nothing to warn about
            assert est.needs_imatrix == they_need, f"{src.name} {qtype}"
        checked += 1
    assert checked >= len(cases) - 3


# -- quantizing -----------------------------------------------------------------------------


def test_q8_0_and_q4_k_m_load_and_generate(f32_model: Path, q4km: Q.QuantReport, work: Path) -> None:
    q8 = Q.quantize(f32_model, work / "smollm2-Q8_0.gguf", "Q8_0", threads=2)
    assert file_type(q8.out) == 7 and file_type(q4km.out) == 15
    types = tensor_types(q8.out)
    assert {types[n] for n in types if n.endswith("norm.weight")} == {"F32"}
    assert {types[n] for n in types if not n.endswith("norm.weight")} == {"Q8_0"}
    for report in (q8, q4km):
        assert greedy_text(report.out).strip()
        # the dry-run estimate against the file llama.cpp wrote: exact to the byte here
        assert abs(report.size - report.estimated_size) <= 32, (report.size, report.estimated_size)
    assert q8.size > q4km.size > 0
    assert not list(work.glob(".*.part"))


def test_q4_k_m_mixture_is_llama_cpps(tiny: Path, work: Path) -> None:
    """Rows of 256/768: output.weight Q6_K, attn_v and ffn_down Q6_K on use_more_bits layers, the rest Q4_K."""
    report = Q.quantize(tiny, work / "tiny-Q4_K_M.gguf", "Q4_K_M", threads=2)
    types = tensor_types(report.out)
    for name, ty in types.items():
        if name.endswith("norm.weight"):
            want = "F32"
        elif name == "output.weight":
            want = "Q6_K"
        elif name.endswith(("attn_v.weight", "ffn_down.weight")):
            want = "Q6_K" if more_bits(layer_of(name), TINY_LAYERS) else "Q4_K"
        else:
            want = "Q4_K"
        assert ty == want, name
    bumped = sorted(layer_of(n) for n, ty in types.items() if n.endswith("attn_v.weight") and ty == "Q6_K")
    assert bumped == [0, 3, 6, 7]
    assert greedy_text(report.out)  # llama.cpp runs it


def test_q4_k_m_mixture_with_rows_that_do_not_fit(q4km: Q.QuantReport) -> None:
    """SmolLM2's rows of 576 are not whole 256-blocks: Q4_K falls back to Q5_0, Q6_K to Q8_0; ffn_down
    (rows of 1536) keeps the k-quants; the tied embeddings take the output tensor's rule (Q8_0)."""
    types = tensor_types(q4km.out)
    n_layers = 30
    for name, ty in types.items():
        if name.endswith("norm.weight"):
            want = "F32"
        elif name == "token_embd.weight":
            want = "Q8_0"
        elif name.endswith("attn_v.weight"):
            want = "Q8_0" if more_bits(layer_of(name), n_layers) else "Q5_0"
        elif name.endswith("ffn_down.weight"):
            want = "Q6_K" if more_bits(layer_of(name), n_layers) else "Q4_K"
        else:
            want = "Q5_0"
        assert ty == want, name
    assert "output.weight" not in types


def test_pure_leave_output_and_overrides(tiny: Path, work: Path) -> None:
    pure = Q.quantize(tiny, work / "tiny-pure.gguf", "Q4_K_M", options=TypeOptions(pure=True), threads=2)
    types = tensor_types(pure.out)
    assert {ty for n, ty in types.items() if not n.endswith("norm.weight")} == {"Q4_K"}

    kept = Q.quantize(
        tiny, work / "tiny-keep-output.gguf", "Q4_K_M", options=TypeOptions(leave_output_tensor=True), threads=2
    )
    types = tensor_types(kept.out)
    assert types["output.weight"] == "F16"
    assert types["blk.0.attn_v.weight"] == "Q6_K" and types["blk.1.attn_v.weight"] == "Q4_K"

    over = Q.quantize(
        tiny, work / "tiny-override.gguf", "Q4_K_M", options=TypeOptions.parse(tensor_types=["attn_q=q8_0"]), threads=2
    )
    types = tensor_types(over.out)
    assert {ty for n, ty in types.items() if n.endswith("attn_q.weight")} == {"Q8_0"}
    assert types["blk.1.attn_k.weight"] == "Q4_K" and types["output.weight"] == "Q6_K"
    assert greedy_text(over.out)


def test_a_split_model_is_quantized_from_its_first_part(tiny: Path, work: Path) -> None:
    parts = split_copy(tiny, work / "split", 4_000_000)
    assert len(parts) > 2
    report = Q.quantize(parts[0], work / "split" / "tiny-split.Q4_K_M.gguf", "Q4_K_M", threads=2)
    whole = Q.estimate(tiny, "Q4_K_M")
    assert tensor_types(report.out) == {t.name: t.new_type for t in whole.plan.tensors}
    assert abs(report.size - report.estimated_size) <= 32 * len(parts)
    with pytest.raises(CatteryError, match="by its first file"):
        Q.estimate(parts[1], "Q4_K_M")


def test_several_types_in_one_command(tiny: Path, work: Path) -> None:
    out = work / "several"
    proc = run_cattery("quantize", str(tiny), "-o", str(out), "--type", "q5_k_m", "--type", "Q4_0", "--type", "IQ4_XS")
    assert proc.returncode == 0, proc.stderr
    made = {p.name: file_type(p) for p in out.iterdir()}
    assert made == {"tiny.Q5_K_M.gguf": 17, "tiny.Q4_0.gguf": 2, "tiny.IQ4_XS.gguf": 30}
    assert proc.stdout.count("wrote ") == 3
    assert greedy_text(out / "tiny.IQ4_XS.gguf")
    assert Q.output_stem(Path("llama-2-13b-f16.gguf")) == "llama-2-13b"
    assert Q.output_stem(Path("SmolLM2-135M-Instruct.Q4_1.gguf")) == "SmolLM2-135M-Instruct"
    assert Q.output_stem(Path("model-00001-of-00003.gguf")) == "model"
    proc = run_cattery("quantize", str(tiny), "-o", str(work / "x.gguf"), "--type", "Q4_0", "--type", "Q5_0")
    assert "names a folder" in one_error_line(proc)


def test_dry_run_prints_the_size_first_and_writes_nothing(f32_model: Path, q4km: Q.QuantReport, work: Path) -> None:
    out = work / "dry"
    proc = run_cattery("quantize", str(f32_model), "-o", str(out), "--type", "Q4_K_M", "--type", "IQ2_XXS", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert not out.exists()
    first, second = proc.stdout.splitlines()[:2]
    assert first.startswith("Q4_K_M: about 105.5 MB") and "Q5_0 ×166" in first
    assert q4km.size == 105_454_144  # what the line above promised
    assert "needs an importance matrix" in second
    assert "refuse IQ2_XXS" in proc.stderr
    est = Q.estimate(f32_model, "Q4_K_M")
    assert est.size == q4km.size  # the estimate is exact: same types, same block sizes, same padding
    beside = run_cattery("quantize", str(f32_model), "--type", "Q8_0", "--dry-run")  # no -o: beside the input
    assert beside.returncode == 0, beside.stderr
    assert beside.stdout.rstrip().endswith(f"→ {f32_model.parent / Q.output_stem(f32_model)}.Q8_0.gguf")


def test_iq2_needs_an_importance_matrix_and_works_with_one(tiny: Path, work: Path) -> None:
    with pytest.raises(CatteryError, match="needs an importance matrix") as err:
        Q.quantize(tiny, work / "tiny-IQ2_XXS-no.gguf", "IQ2_XXS")
    assert "\n" not in str(err.value)
    proc = run_cattery("quantize", str(tiny), "-o", str(work / "no.gguf"), "--type", "IQ2_XXS")
    assert "importance matrix" in one_error_line(proc)

    values = tiny_imatrix_values(tiny)
    dat = write_dat_imatrix(work / "tiny.imatrix.dat", values)
    read = read_imatrix(dat)
    assert read.format == "dat" and read.chunks == 10 and read.datasets == ["wiki.txt"]
    assert set(read.entries) == set(values)
    for name, v in values.items():
        np.testing.assert_allclose(read.entries[name], v, rtol=1e-6)

    report = Q.quantize(tiny, work / "tiny-IQ2_XXS.gguf", "IQ2_XXS", imatrix=dat, threads=2)
    types = tensor_types(report.out)
    assert types["blk.2.attn_q.weight"] == "IQ2_XXS" and types["output.weight"] == "Q5_K"
    with report.out.open("rb") as f:
        header = read_header(f)
    assert header.get("quantize.imatrix.entries_count") == len(values)
    assert header.get("quantize.imatrix.dataset") == "wiki.txt"
    assert report.size == report.estimated_size
    assert greedy_text(report.out) is not None  # llama.cpp loads and runs it


def test_gguf_imatrix_is_read_as_llama_quantize_reads_it(tiny: Path, work: Path) -> None:
    rng = np.random.default_rng(5)
    sums = {"blk.0.attn_q.weight": rng.random((1, 256)) * 50, "blk.0.ffn_down.weight": rng.random((2, 768)) * 9}
    counts = {"blk.0.attn_q.weight": np.array([25.0]), "blk.0.ffn_down.weight": np.array([3.0, 0.0])}
    path = write_gguf_imatrix(work / "tiny.imatrix.gguf", sums, counts)
    read = read_imatrix(path)
    assert read.format == "gguf" and read.chunks == 12 and read.datasets == ["wiki.txt"]
    np.testing.assert_allclose(read.entries["blk.0.attn_q.weight"], sums["blk.0.attn_q.weight"][0] / 25.0, rtol=1e-6)
    down = read.entries["blk.0.ffn_down.weight"]
    np.testing.assert_allclose(down[:768], sums["blk.0.ffn_down.weight"][0] / 3.0, rtol=1e-6)
    assert np.all(down[768:] == 1.0)  # an expert never reached counts as 1, as llama-quantize does
    # an entry of the wrong length for the tensor is refused before llama.cpp starts
    with pytest.raises(CatteryError, match="has 1536 values, the tensor needs 768"):
        Q.quantize(tiny, work / "never.gguf", "IQ4_XS", imatrix=path)
    # and one that lacks tensors a type needs it for
    partial = write_gguf_imatrix(work / "part.gguf", *_one(sums, counts))
    with pytest.raises(CatteryError, match=r"no entry for blk\.0\.attn_k\.weight"):
        Q.quantize(tiny, work / "never.gguf", "IQ2_XXS", imatrix=partial)
    with pytest.raises(CatteryError, match="not an importance matrix"):
        read_imatrix(TEXT_FILE)
    with pytest.raises(CatteryError, match="not an importance matrix"):
        read_imatrix(tiny)  # a GGUF, but a model
    assert not (work / "never.gguf").exists()


def _one(sums: dict, counts: dict) -> tuple[dict, dict]:
    name = "blk.0.attn_q.weight"
    return {name: sums[name]}, {name: counts[name]}


def test_errors_are_one_line(tiny: Path, model_path: Path, work: Path) -> None:
    bad = work / "notes.gguf"
    bad.write_text("not a model\n")
    assert "not a GGUF file" in one_error_line(
        run_cattery("quantize", str(bad), "-o", str(work / "o.gguf"), "--type", "Q4_0")
    )
    assert "unknown quantization type" in one_error_line(
        run_cattery("quantize", str(tiny), "-o", str(work / "o.gguf"), "--type", "Q9_X")
    )
    blocker = work / "a-file"
    blocker.write_text("x")
    line = one_error_line(run_cattery("quantize", str(tiny), "-o", str(blocker / "o.gguf"), "--type", "Q4_0"))
    assert str(blocker) in line and "not a folder" in line
    assert "already quantized" in one_error_line(
        run_cattery("quantize", str(model_path), "-o", str(work / "o.gguf"), "--type", "Q4_K_M")
    )
    assert "not found" in one_error_line(
        run_cattery("quantize", str(work / "nope.gguf"), "-o", "x.gguf", "--type", "Q4_0")
    )
    assert "PATTERN=TYPE" in one_error_line(
        run_cattery("quantize", str(tiny), "-o", str(work / "o.gguf"), "--type", "Q4_0", "--tensor-type", "attn_q")
    )
    incomplete = write_gguf(work / "incomplete.gguf")  # a llama GGUF without the keys llama.cpp needs
    line = one_error_line(run_cattery("quantize", str(incomplete), "-o", str(work / "o.gguf"), "--type", "Q8_0"))
    assert "llama.cpp could not quantize it" in line
    assert not (work / "o.gguf").exists()
    free = shutil.disk_usage(work).free
    with pytest.raises(CatteryError, match="not enough disk space"):
        require_disk(work, free + 10**9, "the output")
    require_disk(work, 1000, "the output")


def test_a_progress_callback_can_cancel(tiny: Path, work: Path) -> None:
    import threading

    class Stop(Exception):
        pass

    seen: list[tuple[int, int, str, int, int]] = []

    def progress(done: int, total: int, name: str, nbytes: int, total_bytes: int) -> None:
        seen.append((done, total, name, nbytes, total_bytes))
        if done >= 3:
            raise Stop

    out = work / "cancelled" / "tiny.Q8_0.gguf"
    with pytest.raises(Stop):
        Q.quantize(tiny, out, "Q8_0", progress=progress)
    for thread in threading.enumerate():  # llama.cpp's thread runs on to its end, into a removed folder
        if thread.name == "cattery-quantize":
            thread.join(DEADLINE)
    assert seen[0][1] == 75 and seen[0][2] == "output.weight"
    input_bytes = sum(tensor_bytes(t.ggml_type, t.shape) for t in Q.read_source(tiny).tensors)
    assert 0 < seen[0][3] < seen[-1][3] < seen[0][4] == input_bytes
    assert list(out.parent.iterdir()) == []


def test_ctrl_c_leaves_no_file(f32_model: Path, work: Path) -> None:
    out = work / "interrupted"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "quantize", str(f32_model), "-o", str(out / "m.gguf"), "--type", "Q4_K_M"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + DEADLINE
    while not (out.exists() and any(out.iterdir())) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # llama.cpp is writing now
    if proc.poll() is not None:
        pytest.skip("the quantization finished before it could be interrupted")
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 130, err
    assert list(out.iterdir()) == []


# -- perplexity --------------------------------------------------------------------------------


def test_perplexity_is_finite_repeatable_and_worse_for_q2_k(f32_model: Path, q2k: Q.QuantReport, text: str) -> None:
    first = perplexity(f32_model, text, n_ctx=PPL_CTX, chunks=2, threads=2)
    again = perplexity(f32_model, text, n_ctx=PPL_CTX, chunks=2, threads=2)
    low = perplexity(q2k.out, text, n_ctx=PPL_CTX, chunks=2, threads=2)
    assert math.isfinite(first.ppl) and first.ppl > 1 and first.error > 0
    assert (first.ppl, first.error) == (again.ppl, again.error)
    assert first.chunks == 2 and first.scored == 2 * (PPL_CTX - PPL_CTX // 2 - 1)
    assert first.running[-1] == first.ppl
    assert low.ppl > first.ppl


def test_perplexity_of_one_chunk_equals_its_definition(f32_model: Path, text: str) -> None:
    """One chunk evaluated here with every position's logits: exp(mean NLL) over its second half."""
    import llama_cpp as L

    ensure_backend()
    report = perplexity(f32_model, text, n_ctx=PPL_CTX, chunks=1, threads=2)
    model = L.llama_model_load_from_file(str(f32_model).encode(), L.llama_model_default_params())
    vocab = L.llama_model_get_vocab(model)
    data = text.encode()
    buf = (L.llama_token * (len(data) + 8))()
    n = L.llama_tokenize(vocab, data, len(data), buf, len(buf), True, False)
    tokens = list(buf[:n])
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = 256, PPL_CTX, PPL_CTX, 2, 2
    ctx = L.llama_init_from_model(model, cp)
    batch = L.llama_batch_init(PPL_CTX, 0, 1)
    try:
        chunk = tokens[:PPL_CTX]
        for k in range(PPL_CTX):
            batch.token[k] = L.llama_vocab_bos(vocab) if k == 0 and L.llama_vocab_get_add_bos(vocab) else chunk[k]
            batch.pos[k], batch.n_seq_id[k], batch.logits[k] = k, 1, True
            batch.seq_id[k][0] = 0
        batch.n_tokens = PPL_CTX
        assert L.llama_decode(ctx, batch) == 0
        n_vocab = L.llama_vocab_n_tokens(vocab)
        logits = np.ctypeslib.as_array(L.llama_get_logits(ctx), shape=(PPL_CTX, n_vocab)).astype(np.float64)
    finally:
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        L.llama_model_free(model)
    nll = []
    for j in range(PPL_CTX // 2, PPL_CTX - 1):
        row = logits[j]
        nll.append(float(np.log(np.exp(row - row.max()).sum()) + row.max() - row[chunk[j + 1]]))
    mean = sum(nll) / len(nll)
    ppl = math.exp(mean)
    error = ppl * math.sqrt((sum(x * x for x in nll) / len(nll) - mean * mean) / (len(nll) - 1))
    assert report.tokens == len(tokens) and report.scored == len(nll)
    assert report.ppl == pytest.approx(ppl, rel=1e-4)
    assert report.error == pytest.approx(error, rel=1e-3)


def test_eval_command(q4km: Q.QuantReport, cattery_home: Path, work: Path) -> None:
    proc = run_cattery(
        "eval", str(q4km.out), str(TEXT_FILE), "--ctx", str(PPL_CTX), "--chunks", "2", "--json", home=cattery_home
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["chunks"] == 2 and result["n_ctx"] == PPL_CTX and math.isfinite(result["ppl"])
    short = work / "short.txt"
    short.write_text("Too short to measure.")
    assert "needs at least" in one_error_line(run_cattery("eval", str(q4km.out), str(short), home=cattery_home))
    assert "no such file" in one_error_line(
        run_cattery("eval", str(q4km.out), str(work / "none.txt"), home=cattery_home)
    )


def test_the_estimate_is_exact_whatever_the_length_of_the_recorded_imatrix_path(
    tiny: Path, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output records the importance matrix's path, so its header's length, and where its
    padding falls, depend on that path; the source's own padding is not header. Paths one to 32
    bytes longer cross every 32-byte boundary once (this failed for some lengths: the estimate
    counted the source's padding as header and came out 32 bytes over). The paths are relative,
    so a long temporary folder (cut at 127 bytes in the file) cannot pin their length."""
    values = tiny_imatrix_values(tiny)
    monkeypatch.chdir(work)
    sizes = set()
    for extra in range(0, 32, 3):
        dat = write_dat_imatrix(Path(f"m{'x' * extra}.dat"), values)
        report = Q.quantize(tiny, work / f"tiny-{extra}.gguf", "Q8_0", imatrix=dat, threads=2)
        assert report.size == report.estimated_size, f"imatrix path {len(str(dat))} bytes long"
        sizes.add(report.size)
        report.out.unlink()
    assert len(sizes) > 1  # the header's length did move the data across a boundary
