"""GGUF headers from strangers (issue 13, the GGUF door): bounded, one line, before llama.cpp.

Every hostile header here is read through the real code path (`read_model_info`, the
converters' `GGUFFile`, quantize's `read_source`) in a forked child under tests.hostile.bounds's
bounds (5 s, 256 MB): it must be accepted or refused with a `CatteryError` of one line
naming the file. Hypothesis then mutates real headers (one written by gguf-py, and the
bundled model's own) byte by byte. A few files go through the real `cattery` command, and
two through llama.cpp itself, to show the aborts the pre-checks keep it from.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.engine.gguf_header import (
    MAX_HEADER_BYTES,
    MAX_ITEMS,
    MAX_KV,
    MAX_TENSORS,
    GGUFFormatError,
    read_array_item,
    read_header,
)
from app.engine.metadata import ModelInfo, model_info_from, read_model_info
from app.errors import InputError, ModelFileError
from app.terminal import strip_controls
from tests.conftest import run_cattery
from tests.gguf_files import write_gguf
from tests.hostile.bounds import Outcome, assert_bounded, assert_one_line_failure, assert_refused, run_bounded
from tests.hostile.cases_gguf import (
    ARRAY,
    BOOL,
    F32,
    F64,
    I32,
    I64,
    STRING,
    U8,
    U32,
    U64,
    WORST_CASES,
    arr,
    kv,
    llama_kvs,
    raw_gguf,
    s,
    small_model,
    tensor,
    u32,
    u64,
)

Q4_0 = 2  # ggml type: blocks of 32 values in 18 bytes


def _id(value: object) -> str:
    """Short test ids: the bytes of a hostile file in an id would end up in PYTEST_CURRENT_TEST."""
    if isinstance(value, bytes):
        return f"{len(value)}B"
    if isinstance(value, dict):
        return "+".join(value)
    if isinstance(value, list):
        return "-".join(_id(v) for v in value)
    return re.sub(r"[^\w.,-]+", "_", str(value))[:40]


def _write(tmp_path: Path, data: bytes, name: str = "hostile.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused(tmp_path: Path, data: bytes, match: str) -> Outcome:
    """`data` as a model file is refused in one line that names the file and says `match`."""
    path = _write(tmp_path, data)
    out = assert_refused(read_model_info, path, match=match)
    assert out.detail.startswith(str(path)), out.detail
    return out


def accepted(tmp_path: Path, data: bytes) -> ModelInfo:
    path = _write(tmp_path, data)
    out = run_bounded(read_model_info, path, keep_value=True)
    assert out.kind == "ok", str(out)
    info: ModelInfo = out.value
    return info


def with_vocab(n: int = 16, **override: bytes) -> bytes:
    """small_model with a gpt2 vocabulary of `n` tokens (as a long, on-disk array when n > 64)."""
    tokens = b"".join(s(f"tok{i}") for i in range(n))
    entries = {
        "tokenizer__ggml__model": kv("tokenizer.ggml.model", STRING, s("gpt2")),
        "tokenizer__ggml__tokens": kv("tokenizer.ggml.tokens", ARRAY, arr(STRING, n, tokens)),
        **override,
    }
    return small_model(**entries)


# -- the worst cases (the ones that hung, recursed or ate memory) -------------------------------


@pytest.mark.parametrize(("name", "case"), WORST_CASES, ids=[n for n, _ in WORST_CASES])
def test_worst_cases_are_refused_within_bounds(name: str, case: Any) -> None:
    out = assert_refused(case, what=name)
    assert isinstance(out.detail, str) and ".gguf: " in out.detail


# -- the file as a whole ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not a GGUF file"),
        (b"GGU", "not a GGUF file"),
        (b"GGUF", "truncated"),
        (b"GGUF" + u32(3) + u64(0), "truncated"),
        (b"GGUF" + u32(1) + u64(0) + u64(0), "version 1"),
        (b"GGUF" + u32(0) + u64(0) + u64(0), "big-endian"),
        (b"GGUF" + u32(3 << 16) + u64(0) + u64(0), "big-endian"),
        (b"GGUF" + u32(99) + u64(0) + u64(0), "version 99"),
        (b"GGUF" + u32(3) + u64(0) + u64(1 << 63), "metadata entries"),
        (b"GGUF" + u32(3) + u64(1 << 63) + u64(0), "tensors"),
        (b"GGUF" + u32(3) + u64(0) + u64(MAX_KV + 1), "metadata entries"),
        (b"GGUF" + u32(3) + u64(MAX_TENSORS + 1) + u64(0), "tensors"),
        (b"GGUF" + u32(3) + u64(0) + u64(5000) + b"\0" * 100, "could hold"),
        (b"GGUF" + u32(3) + u64(5000) + u64(0) + b"\0" * 100, "could hold"),
    ],
    ids=_id,
)
def test_broken_preambles(tmp_path: Path, data: bytes, match: str) -> None:
    refused(tmp_path, data, match)


def test_every_truncation_of_a_small_model_is_one_line(tmp_path: Path) -> None:
    data = with_vocab(100)
    for cut in list(range(0, 300, 7)) + list(range(300, len(data), 97)):
        out = run_bounded(read_model_info, _write(tmp_path, data[:cut]))
        assert out.kind == "refused" and "\n" not in out.detail, f"cut at {cut}: {out}"


def test_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)  # reading it would block for ever
    assert_refused(read_model_info, fifo, match="not a regular file")
    assert_refused(read_model_info, Path("/dev/zero"), match="not a regular file")
    assert_refused(_gguf_file_everything, fifo, match="not a regular file")


# -- keys and values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (s("k", length=(1 << 64) - 1), "a key needs 18,446,744,073,709,551,615 bytes"),
        (s("x" * 70_000) + u32(U8) + b"\1", "a key of 70,000 bytes"),
        (s("") + u32(U8) + b"\1", "an empty key"),
        (s(b"\xff\xfekey") + u32(U8) + b"\1", "not UTF-8"),
        (kv("k", 13, b"\0" * 8), "unknown value type 13"),
        (kv("k", 0xFFFFFFFF, b"\0" * 8), "unknown value type"),
        (kv("k", STRING, s("abc", length=1 << 62)), "a string needs"),
        (kv("k", STRING, s("abc", length=(1 << 30) - 1)), "a string needs"),
        (kv("k", ARRAY, arr(STRING, 1 << 63)), "claims 9,223,372,036,854,775,808 items"),
        (kv("k", ARRAY, arr(U8, 1 << 63)), "claims"),
        (kv("k", ARRAY, arr(U64, (1 << 61) + 1)), "claims"),
        (kv("k", ARRAY, arr(ARRAY, 1 << 40)), "claims"),
        (kv("k", ARRAY, arr(77, 3, b"\0" * 30)), "unknown type 77"),
        (kv("k", ARRAY, arr(ARRAY, 1) * 9 + arr(U8, 0)), "nested more than 8"),
        (kv("k", ARRAY, arr(ARRAY, 1) * 200_000 + arr(U8, 0)), "nested more than 8"),
        (kv("k", ARRAY, arr(STRING, 100, s("a") * 99 + s("b", length=1 << 40))), "a string in an array"),
    ],
    ids=_id,
)
def test_hostile_metadata_entries(tmp_path: Path, entry: bytes, match: str) -> None:
    refused(tmp_path, raw_gguf([*llama_kvs(), entry]), match)


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    again = kv("general.name", STRING, s("second"))
    out = refused(tmp_path, raw_gguf([*llama_kvs(), again]), "appears twice")
    assert "'general.name'" in out.detail


def test_a_key_with_a_newline_stays_on_one_line(tmp_path: Path) -> None:
    out = refused(tmp_path, raw_gguf([*llama_kvs(), kv("evil\nkey\x1b[2J", 13, b"")]), "unknown value type")
    assert "\\n" in out.detail and "\x1b" not in out.detail


def test_nesting_at_the_limit_and_long_arrays_of_arrays_are_read(tmp_path: Path) -> None:
    nested = arr(ARRAY, 1) * 7 + arr(U8, 2, b"\1\2")
    long = arr(ARRAY, 100, arr(U32, 2, u32(1) + u32(2)) * 100)
    info = accepted(tmp_path, small_model(deep=kv("deep", ARRAY, nested), wide=kv("wide", ARRAY, long)))
    assert info.block_count == 2


def test_the_budgets_stop_sprays_and_multiplying_arrays(tmp_path: Path) -> None:
    # A header past MAX_HEADER_BYTES of strings: refused when the budget runs out.
    chunk = kv("spray", STRING, s(b"A" * (1 << 20)))
    entries = [kv(f"spray{i}", STRING, s(b"A" * (1 << 20))) for i in range(MAX_HEADER_BYTES // len(chunk) + 2)]
    refused(tmp_path, raw_gguf([*llama_kvs(), *entries]), "larger than 64 MiB")
    # More vocabulary strings than MAX_ITEMS: refused before they are walked.
    refused(
        tmp_path,
        raw_gguf([*llama_kvs(), kv("v", ARRAY, arr(STRING, MAX_ITEMS + 1, u64(0) * (MAX_ITEMS + 1)))]),
        "values",
    )
    # 64 × 64 × 64 short arrays of 64 bytes: 16.7M kept values from 20 MB.
    level = arr(U8, 64, b"\1" * 64)
    for _ in range(3):
        level = arr(ARRAY, 64, level * 64)
    refused(tmp_path, raw_gguf([*llama_kvs(), kv("bomb", ARRAY, level)]), "short-array values")


# -- tensors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ([tensor("x" * 64, (4,))], "more than the 63 allowed"),
        ([tensor(b"\xffname", (4,))], "not UTF-8"),
        ([tensor("a", (4,)), tensor("a", (4,), offset=32)], "appears twice"),
        ([tensor("a", (1, 1, 1, 1, 1))], "5 dimensions"),
        ([tensor("a", (1 << 63,))], "a dimension of"),
        ([tensor("a", (1 << 32, 1 << 32))], "more elements than"),
        ([tensor("a", (4,), ggml_type=999)], "unknown tensor type 999"),
        ([tensor("a", (4,), ggml_type=4)], "unknown tensor type 4"),  # Q4_2, long removed
        ([tensor("a", (30,), ggml_type=Q4_0)], "not a multiple of the 32-element blocks"),
        ([tensor("a", (4,), offset=4)], "starts at byte 4"),
        ([tensor("a", (16,)), tensor("b", (4,), offset=0)], "starts at byte 0"),
        ([tensor("a", (4,), offset=(1 << 64) - 1)], "beyond any file"),
        ([tensor("a", (1 << 40,))], "truncated"),
    ],
    ids=_id,
)
def test_hostile_tensor_directories(tmp_path: Path, tensors: list[bytes], match: str) -> None:
    refused(tmp_path, raw_gguf(llama_kvs(), tensors, data=b"\0" * 64), match)


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (kv("general.alignment", STRING, s("32")), "should be a u32 integer, not string"),
        (kv("general.alignment", U64, u64(32)), "not u64"),
        (kv("general.alignment", U32, u32(0)), "not a power of two"),
        (kv("general.alignment", U32, u32(48)), "not a power of two"),
        (kv("general.alignment", U32, u32(1 << 31)), "truncated"),
    ],
    ids=_id,
)
def test_hostile_alignments(tmp_path: Path, entry: bytes, match: str) -> None:
    refused(tmp_path, raw_gguf([*llama_kvs(), entry], [tensor("a", (4,))], data=b"\0" * 64), match)


def test_a_power_of_two_alignment_is_honoured(tmp_path: Path) -> None:
    kvs = [*llama_kvs(), kv("general.alignment", U32, u32(64))]
    data = raw_gguf(kvs, [tensor("a", (4,)), tensor("b", (4,), offset=64)], data=b"\0" * 128, align=64)
    with _write(tmp_path, data).open("rb") as f:
        header = read_header(f)
    assert header.data_offset % 64 == 0 and header.data_end == header.data_offset + 64 + 16


# -- known keys: types and ranges -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "entry", "match"),
    [
        ("general__name", kv("general.name", U32, u32(7)), "general.name should be a string, not an integer (7)"),
        ("general__architecture", kv("general.architecture", U32, u32(1)), "should be a string"),
        ("general__architecture", kv("general.architecture", STRING, s("a" * 500)), "not an architecture"),
        ("general__file_type", kv("general.file_type", STRING, s("Q4")), "should be an integer"),
        ("llama__context_length", kv("llama.context_length", STRING, s("4096")), "should be an integer, not a string"),
        ("llama__context_length", kv("llama.context_length", U64, u64(1 << 63)), "out of range"),
        ("llama__context_length", kv("llama.context_length", F32, struct.pack("<f", 4096.0)), "should be an integer"),
        ("llama__block_count", kv("llama.block_count", U32, u32(0)), "out of range"),
        ("llama__block_count", kv("llama.block_count", U32, u32(513)), "out of range"),
        ("llama__block_count", kv("llama.block_count", U32, u32(0xFFFFFFFF)), "out of range"),
        ("llama__block_count", kv("llama.block_count", BOOL, b"\1"), "should be an integer, not a bool"),
        ("llama__embedding_length", kv("llama.embedding_length", U64, u64(1 << 40)), "out of range"),
        ("llama__attention__head_count", kv("llama.attention.head_count", I32, struct.pack("<i", -4)), "range"),
        ("llama__rope__freq_base", kv("llama.rope.freq_base", F32, struct.pack("<f", float("nan"))), "finite"),
        ("llama__rope__freq_base", kv("llama.rope.freq_base", F64, struct.pack("<d", float("inf"))), "finite"),
        ("llama__rope__freq_base", kv("llama.rope.freq_base", F32, struct.pack("<f", -1.0)), "out of range"),
        ("llama__rope__freq_base", kv("llama.rope.freq_base", STRING, s("1e4")), "should be a number"),
        ("llama__rope__scaling__type", kv("llama.rope.scaling.type", STRING, s("bogus")), "not a RoPE scaling"),
        ("llama__rope__scaling__type", kv("llama.rope.scaling.type", U32, u32(1)), "should be a string"),
        ("llama__rope__scaling__factor", kv("llama.rope.scaling.factor", F32, struct.pack("<f", 1e-30)), "range"),
        ("llama__expert_count", kv("llama.expert_count", U32, u32(1000)), "out of range"),
        ("llama__expert_count", kv("llama.expert_count", U32, u32(8)), "expert_used_count is 0"),
        ("tokenizer__ggml__add_bos_token", kv("tokenizer.ggml.add_bos_token", U8, b"\1"), "true or false"),
        ("split__count", kv("split.count", STRING, s("2")), "should be an integer"),
    ],
    ids=_id,
)
def test_known_keys_of_the_wrong_type_or_range(tmp_path: Path, key: str, entry: bytes, match: str) -> None:
    out = refused(tmp_path, small_model(**{key: entry}), match)
    assert isinstance(out.detail, str) and out.error_type == "GGUFFormatError"


@pytest.mark.parametrize(
    ("key", "entry", "match"),
    [
        ("tokenizer__ggml__bos_token_id", kv("tokenizer.ggml.bos_token_id", STRING, s("1")), "should be an integer"),
        ("tokenizer__ggml__eos_token_id", kv("tokenizer.ggml.eos_token_id", F32, b"\0" * 4), "should be an integer"),
        ("tokenizer__ggml__tokens", kv("tokenizer.ggml.tokens", ARRAY, arr(U32, 16, u32(1) * 16)), "of strings"),
        ("tokenizer__ggml__tokens", kv("tokenizer.ggml.tokens", STRING, s("tok")), "an array of strings"),
        ("tokenizer__ggml__scores", kv("tokenizer.ggml.scores", ARRAY, arr(STRING, 16, s("x") * 16)), "f32"),
        ("tokenizer__ggml__scores", kv("tokenizer.ggml.scores", ARRAY, arr(F32, 3, b"\0" * 12)), "3 entries"),
        ("tokenizer__ggml__token_type", kv("tokenizer.ggml.token_type", ARRAY, arr(U8, 16, b"\1" * 16)), "i32"),
        ("tokenizer__ggml__merges", kv("tokenizer.ggml.merges", ARRAY, arr(U32, 1, u32(1))), "of strings"),
        ("tokenizer__ggml__model", kv("tokenizer.ggml.model", U32, u32(1)), "should be a string"),
    ],
    ids=_id,
)
def test_tokenizer_keys_of_the_wrong_type(tmp_path: Path, key: str, entry: bytes, match: str) -> None:
    refused(tmp_path, with_vocab(**{key: entry}), match)


def test_what_llama_cpp_lets_go_is_a_warning(tmp_path: Path) -> None:
    info = accepted(
        tmp_path,
        with_vocab(
            100,
            tokenizer__ggml__bos_token_id=kv("tokenizer.ggml.bos_token_id", U32, u32(1_000_000)),
            tokenizer__ggml__eos_token_id=kv("tokenizer.ggml.eos_token_id", I32, struct.pack("<i", -1)),
            tokenizer__ggml__eot_token_id=kv("tokenizer.ggml.eot_token_id", I64, struct.pack("<q", 99)),
            tokenizer__chat_template=kv("tokenizer.chat_template", U32, u32(5)),
            general__size_label=kv("general.size_label", ARRAY, arr(U8, 1, b"\1")),
            llama__context_length=kv("llama.context_length", U32, u32(0)),
        ),
    )
    assert info.bos_token_id is None and info.bos_token is None
    assert info.eos_token_id is None and info.eot_token_id == 99
    assert info.chat_template is None and info.size_label is None and info.context_length is None
    assert len(info.warnings) == 5 and all("\n" not in w and "hostile.gguf:" in w for w in info.warnings)
    assert any("bos_token_id is 1,000,000" in w for w in info.warnings)


def test_head_counts_of_zero_and_per_layer_arrays(tmp_path: Path) -> None:
    from app.engine.options import LoadOptions
    from app.engine.preflight import choose_ctx, context_warnings, estimate_memory

    per_layer = struct.pack("<100i", *range(100))  # 100 entries: left on disk, read when asked
    info = accepted(
        tmp_path,
        small_model(
            llama__attention__head_count=kv("llama.attention.head_count", U32, u32(0)),
            llama__attention__head_count_kv=kv("llama.attention.head_count_kv", ARRAY, arr(I32, 100, per_layer)),
            llama__feed_forward_length=kv("llama.feed_forward_length", ARRAY, arr(U32, 2, u32(8) + u32(16))),
        ),
    )
    assert info.head_count == 0 and info.head_dim_k is None and info.head_count_kv == 99
    assert info.feed_forward_length == 16
    n_ctx = choose_ctx(info, LoadOptions(rope_scale=4.0))
    assert n_ctx > 0 and estimate_memory(info, n_ctx, LoadOptions(), 0).ram >= 0
    assert len(context_warnings(info, n_ctx, LoadOptions())) == 1  # 4096 asked of a 2048 model


def test_extreme_but_legal_values_keep_preflight_finite(tmp_path: Path) -> None:
    from app.engine.options import LoadOptions
    from app.engine.preflight import choose_ctx, context_warnings, estimate_memory, trained_context_limit

    info = accepted(
        tmp_path,
        small_model(
            llama__context_length=kv("llama.context_length", U32, u32(0xFFFFFFFF)),
            llama__block_count=kv("llama.block_count", U32, u32(512)),
            llama__embedding_length=kv("llama.embedding_length", U32, u32(1 << 20)),
            llama__attention__head_count=kv("llama.attention.head_count", U32, u32(1)),
            llama__rope__scaling__type=kv("llama.rope.scaling.type", STRING, s("linear")),
            llama__rope__scaling__factor=kv("llama.rope.scaling.factor", F32, struct.pack("<f", 1 / 1024)),
        ),
    )
    options = LoadOptions(rope_scale=1e6)
    assert trained_context_limit(info, options.rope_scale) is not None
    n_ctx = choose_ctx(info, options)
    estimate = estimate_memory(info, n_ctx, options, 0)
    assert estimate.ram > 0 and isinstance(context_warnings(info, 1 << 20, LoadOptions()), list)


def test_control_characters_in_names_can_be_shown_and_stripped(tmp_path: Path) -> None:
    evil = "Cat\x1b]0;pwned\x07\x1b[2J\u202emodel"
    info = accepted(
        tmp_path,
        small_model(
            general__name=kv("general.name", STRING, s(evil)),
            general__size_label=kv("general.size_label", STRING, s("7B\x1b[31m")),
            general__architecture=kv("general.architecture", STRING, s("llama")),
        ),
    )
    assert info.name == evil  # kept as the file says; shown visibly by the CLI, stripped by the app
    for value in info.as_dict().values():
        if isinstance(value, str):
            assert "\x1b" not in strip_controls(value) and "\u202e" not in strip_controls(value)
    long = accepted(tmp_path, small_model(general__name=kv("general.name", STRING, s("n" * 100_000))))
    assert long.name is not None and len(long.name) <= 200


# -- the converters' reader and quantize's ----------------------------------------------------


def _gguf_file_everything(path: Path) -> None:
    """Everything a converter reads: every key (long arrays whole) and every typed accessor."""
    from converters.gguf_read import GGUFFile

    g = GGUFFile.open(path)
    for key in g:
        g.get(key)
    g.strings("tokenizer.ggml.tokens")
    g.integer("llama.block_count")
    g.text("general.name")


def _unpack(path: Path, out: Path) -> None:
    from converters.unpack import unpack

    unpack(path, out)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (raw_gguf([*llama_kvs(), kv("v", ARRAY, arr(U32, 2_000_000, b"\0" * 8_000_000))]), "more than the"),
        (raw_gguf([*llama_kvs(), kv("k", ARRAY, arr(STRING, 1 << 63))]), "could hold"),
        (with_vocab(general__name=kv("general.name", U32, u32(3))), "general.name should be a string"),
    ],
    ids=_id,
)
def test_the_converters_reader_is_bounded(tmp_path: Path, data: bytes, match: str) -> None:
    path = _write(tmp_path, data)
    out = assert_refused(_gguf_file_everything, path, match=match)
    assert str(path) in out.detail


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"llama__attention__head_count": kv("llama.attention.head_count", U32, u32(0))}, "out of range"),
        ({"llama__attention__head_count": kv("llama.attention.head_count", U32, u32(5))}, "do not split into 5"),
        ({"tokenizer__ggml__bos_token_id": kv("tokenizer.ggml.bos_token_id", U32, u32(500))}, "not a token"),
        ({"tokenizer__ggml__token_type": kv("tokenizer.ggml.token_type", ARRAY, arr(I32, 3, b"\1" * 12))}, "3 entries"),
        ({"general__architecture": kv("general.architecture", U32, u32(9))}, "should be a string"),
        ({"split__count": kv("split.count", STRING, s("x"))}, "should be an integer"),
    ],
    ids=_id,
)
def test_unpack_refuses_hostile_metadata_in_one_line(tmp_path: Path, override: dict[str, bytes], match: str) -> None:
    tensors = [tensor("token_embd.weight", (64, 16)), tensor("blk.0.attn_q.weight", (64, 64), offset=4096)]
    kvs = llama_kvs(
        llama__feed_forward_length=kv("llama.feed_forward_length", U32, u32(128)),
        tokenizer__ggml__model=kv("tokenizer.ggml.model", STRING, s("gpt2")),
        tokenizer__ggml__tokens=kv("tokenizer.ggml.tokens", ARRAY, arr(STRING, 16, s("t") * 16)),
        **override,
    )
    path = _write(tmp_path, raw_gguf(kvs, tensors, data=b"\0" * (4096 + 64 * 64 * 4)))
    out_dir = tmp_path / "out"
    assert_refused(_unpack, path, out_dir, match=match)
    assert not out_dir.exists() or not any(out_dir.glob("*.safetensors"))


def test_quantize_reads_its_source_with_the_same_checks(tmp_path: Path) -> None:
    from converters.quantize import read_source

    bad = small_model(llama__block_count=kv("llama.block_count", U32, u32(4096)))
    assert_refused(read_source, _write(tmp_path, bad), match="block_count")
    wrong = small_model(llama__attention__head_count=kv("llama.attention.head_count", STRING, s("8")))
    assert_refused(read_source, _write(tmp_path, wrong, "b.gguf"), match="should be an integer")
    ok = run_bounded(read_source, _write(tmp_path, small_model(), "c.gguf"), keep_value=True)
    assert ok.kind == "ok" and ok.value.shape.n_layer == 2 and ok.value.shape.n_head == 4


# -- a reader that is not a local file (the hub's ranged reads) -------------------------------


class RangedFile(io.RawIOBase):
    """A file seen as the hub sees a remote one: no fileno, a `size`, and every block counted
    when fetched (2 MiB, as app.hub.http reads them)."""

    BLOCK = 2 << 20

    def __init__(self, path: Path) -> None:
        self._f = path.open("rb")
        self.size = path.stat().st_size
        self.blocks: set[int] = set()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        start = self._f.tell()
        data = self._f.read(n)
        if data:
            self.blocks.update(range(start // self.BLOCK, (start + len(data) - 1) // self.BLOCK + 1))
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._f.seek(pos, whence)

    def tell(self) -> int:
        return self._f.tell()

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a remote file")

    @property
    def fetched(self) -> int:
        return len(self.blocks) * self.BLOCK


def _remote_read(path: Path) -> int:
    f = RangedFile(path)
    try:
        model_info_from(f, Path("owner/repo/model.gguf"), f.size)
    except ModelFileError as exc:
        raise ModelFileError(f"{exc} [fetched {f.fetched}]") from None
    finally:
        f._f.close()
    return f.fetched


def test_a_lying_remote_header_downloads_a_bounded_amount(tmp_path: Path) -> None:
    # A "vocabulary" of 2,000 strings of 1 MiB each (2 GB), in a sparse file: walking it
    # would fetch every block; the header budget stops it after 64 MiB.
    path = tmp_path / "sparse.gguf"
    head = raw_gguf([*llama_kvs(), kv("tokenizer.ggml.tokens", ARRAY, arr(STRING, 2000))])
    with path.open("wb") as f:
        f.write(head)
        for _ in range(2000):
            f.write(u64(1 << 20))
            f.seek(1 << 20, 1)
        f.truncate()
    out = assert_refused(_remote_read, path, match="64 MiB")
    fetched = int(out.detail.rsplit("fetched ", 1)[1].rstrip("]"))
    assert fetched <= MAX_HEADER_BYTES + (4 << 20), fetched
    assert out.detail.startswith("owner/repo/model.gguf:")
    # An honest header read the same way fetches only its own few MB.
    honest = _write(tmp_path, with_vocab(5000), "honest.gguf")
    done = run_bounded(_remote_read, honest, keep_value=True)
    assert done.kind == "ok" and done.value <= 2 * RangedFile.BLOCK


def test_read_array_item_is_bounded_by_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, with_vocab(100))
    with path.open("rb") as f:
        header = read_header(f)
        ref = header.fields["tokenizer.ggml.tokens"]
        assert read_array_item(f, ref, 99) == "tok99"
        with pytest.raises(IndexError):
            read_array_item(f, ref, 100)
    # The file shrank after its header was read: a clear line, not a struct.error.
    path.write_bytes(path.read_bytes()[: ref.offset + 40])
    with path.open("rb") as f, pytest.raises(GGUFFormatError, match="truncated"):
        read_array_item(f, ref, 99)


def test_the_error_type_is_the_projects_own() -> None:
    assert issubclass(GGUFFormatError, ModelFileError) and issubclass(GGUFFormatError, InputError)


# -- mutation: real headers, mutated byte by byte -------------------------------------------------

_INTERESTING = [
    0,
    1,
    2,
    7,
    8,
    9,
    13,
    64,
    65,
    0x7F,
    0xFF,
    0xFFFF,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    1 << 63,
    (1 << 64) - 1,
]

mutations = st.lists(
    st.one_of(
        st.tuples(st.just("byte"), st.integers(0, 1 << 20), st.integers(0, 255)),
        st.tuples(st.just("u64"), st.integers(0, 1 << 20), st.sampled_from(_INTERESTING)),
        st.tuples(st.just("u32"), st.integers(0, 1 << 20), st.sampled_from(_INTERESTING[:14])),
        st.tuples(st.just("cut"), st.integers(0, 1 << 20), st.just(0)),
    ),
    min_size=1,
    max_size=6,
)


def _mutate(data: bytes, header_len: int, ops: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in ops:
        at = where % max(min(header_len, len(out)), 1)
        if kind == "byte":
            out[at : at + 1] = bytes([value])
        elif kind == "u64":
            out[at : at + 8] = struct.pack("<Q", value)
        elif kind == "u32":
            out[at : at + 4] = struct.pack("<I", value)
        else:
            del out[at:]
    return bytes(out)


def _everything_models_info_does(path: Path) -> None:
    """read_model_info and what `models info` and a load's pre-checks do with its result."""
    from app.engine.options import LoadOptions
    from app.engine.preflight import choose_ctx, context_warnings, estimate_memory
    from app.prompt.builder import choose_format

    info = read_model_info(path)
    choose_format(None, info)
    json.dumps(info.as_dict(), default=str)
    for value in info.as_dict().values():
        if isinstance(value, str):
            strip_controls(value)
    n_ctx = choose_ctx(info, LoadOptions())
    context_warnings(info, n_ctx, LoadOptions())
    estimate_memory(info, n_ctx, LoadOptions(), 0)
    _gguf_file_everything(path)


@pytest.fixture(scope="module")
def written_by_gguf_py(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int]:
    tokens = [f"tok{i}" for i in range(80)] + ["猫", "\x1b[31m"]
    path = write_gguf(
        tmp_path_factory.mktemp("mut") / "m.gguf",
        extra={
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": [float(i) for i in range(len(tokens))],
            "tokenizer.ggml.bos_token_id": 80,
            "tokenizer.ggml.eos_token_id": 81,
            "tokenizer.ggml.add_bos_token": True,
            "tokenizer.chat_template": "{{ messages[0]['content'] }}",
            "llama.rope.freq_base": 500000.0,
            "llama.rope.scaling.type": "linear",
            "llama.rope.scaling.factor": 2.0,
            "small.list": [1, 2, 3],
        },
        tensors={
            "token_embd.weight": np.ones((82, 64), dtype=np.float32),
            "output_norm.weight": np.ones(64, dtype=np.float32),
        },
    )
    data = path.read_bytes()
    with path.open("rb") as f:
        header_len = read_header(f).data_offset
    return data, header_len


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=mutations)
def test_mutated_gguf_py_headers_stay_bounded(
    written_by_gguf_py: tuple[bytes, int], tmp_path_factory: pytest.TempPathFactory, ops: list[Any]
) -> None:
    data, header_len = written_by_gguf_py
    path = tmp_path_factory.mktemp("m") / "mutant.gguf"
    path.write_bytes(_mutate(data, header_len, ops))
    assert_bounded(_everything_models_info_does, path, what=f"mutations {ops}")


@pytest.fixture(scope="module")
def bundled_header(model_path: Path) -> tuple[bytes, int, int]:
    """The bundled model's header bytes (1.8 MB of its 98), its length, and the file's size."""
    with model_path.open("rb") as f:
        header = read_header(f)
        f.seek(0)
        return f.read(header.data_offset), header.data_offset, model_path.stat().st_size


def _bundled_info(data: bytes, size: int) -> None:
    from app.prompt.builder import choose_format

    info = model_info_from(io.BytesIO(data), Path("SmolLM2-mutant.gguf"), size)
    choose_format(None, info)
    json.dumps(info.as_dict(), default=str)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=mutations, near_start=st.booleans())
def test_mutated_bundled_headers_stay_bounded(
    bundled_header: tuple[bytes, int, int], ops: list[Any], near_start: bool
) -> None:
    data, header_len, size = bundled_header
    # The metadata proper is the first ~2 KB (then the vocabulary); the tensor directory is
    # the last ~20 KB. Mutate either, or anywhere.
    span = 4096 if near_start else header_len
    out = run_bounded(_bundled_info, _mutate(data, span, ops), size)
    assert out.bounded, f"mutations {ops}: {out}"


# -- the command line, as a user meets these files --------------------------------------------


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "home" not in p.relative_to(folder).parts}


def test_models_info_shows_escape_sequences_visibly(tmp_path: Path, cattery_home: Path) -> None:
    path = _write(tmp_path, small_model(general__name=kv("general.name", STRING, s("Cat\x1b]0;pwned\x07\x1b[2J"))))
    r = run_cattery("models", "info", str(path), home=cattery_home)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout and "\\u001b]0;pwned" in r.stdout


@pytest.mark.parametrize(
    ("command", "data", "match"),
    [
        (["models", "info"], raw_gguf([*llama_kvs(), kv("deep", ARRAY, arr(ARRAY, 1) * 200_000)]), "nested"),
        (["models", "info"], small_model(llama__block_count=kv("llama.block_count", STRING, s("2"))), "integer"),
        (["prompt", "-m"], small_model(llama__block_count=kv("llama.block_count", U32, u32(4096))), "block_count"),
        (["unpack", "-o", "OUT"], small_model(general__alignment=kv("general.alignment", U32, u32(3))), "power of two"),
        (
            ["chat", "--plain", "-m"],
            with_vocab(tokenizer__ggml__bos_token_id=kv("tokenizer.ggml.bos_token_id", STRING, s("x"))),
            "bos_token_id should be an integer",
        ),
    ],
    ids=_id,
)
def test_the_cli_refuses_hostile_models_in_one_line(
    tmp_path: Path, cattery_home: Path, command: list[str], data: bytes, match: str
) -> None:
    path = _write(tmp_path, data)
    before = _listing(tmp_path)
    args = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    r = run_cattery(*args, str(path), input="/quit\n", home=cattery_home, timeout=120)
    line = assert_one_line_failure(r, match=match)
    assert str(path) in line
    assert _listing(tmp_path) == before  # nothing written beside the file


def _llama_cpp_load(path: Path) -> subprocess.CompletedProcess[str]:
    """llama.cpp's own loader on `path`, in a child process (it may abort)."""
    code = (
        "import sys, llama_cpp as L\n"
        "L.llama_backend_init()\n"
        "p = L.llama_model_default_params()\n"
        "m = L.llama_model_load_from_file(sys.argv[1].encode(), p)\n"
        "print('loaded' if m else 'refused')\n"
    )
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"llama__rope__scaling__type": kv("llama.rope.scaling.type", STRING, s("bogus"))}, "not a RoPE scaling"),
        ({"llama__expert_count": kv("llama.expert_count", U32, u32(8))}, "expert_used_count is 0"),
    ],
    ids=_id,
)
def test_files_that_abort_llama_cpp_are_refused_before_it(
    tmp_path: Path, cattery_home: Path, override: dict[str, bytes], match: str
) -> None:
    path = _write(tmp_path, with_vocab(**override))
    # llama.cpp itself dies on this file (GGML_ASSERT → abort), taking the app with it...
    raw = _llama_cpp_load(path)
    assert raw.returncode == -6, (raw.returncode, raw.stderr[-500:])
    # ...and Cattery refuses it in one line before llama.cpp sees it.
    r = run_cattery("chat", "--plain", "-m", str(path), input="/quit\n", home=cattery_home, timeout=120)
    assert_one_line_failure(r, match=match)
