"""Cattery's streaming GGUF header reader against gguf-py's own reader, field by field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.engine.gguf_header import ArrayRef, read_array_item, read_header
from app.engine.metadata import read_model_info
from app.errors import ModelFileError
from tests.gguf_files import write_gguf


def test_header_matches_gguf_py(tmp_path: Path) -> None:
    import gguf

    tokens = [f"tok{i}" for i in range(200)] + ["猫", "🐱"]
    path = write_gguf(
        tmp_path / "m.gguf",
        extra={
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": [float(i) for i in range(len(tokens))],
            "tokenizer.ggml.bos_token_id": 200,
            "tokenizer.ggml.eos_token_id": 201,
            "tokenizer.ggml.add_bos_token": True,
            "llama.rope.freq_base": 500000.0,
            "small.list": [1, 2, 3],
        },
        tensors={
            "token_embd.weight": np.ones((202, 64), dtype=np.float32),
            "blk.0.attn_q.weight": np.zeros((64, 64), dtype=np.float16),
            "output_norm.weight": np.ones(64, dtype=np.float32),
        },
    )
    reference = gguf.GGUFReader(path)
    with path.open("rb") as f:
        header = read_header(f)
        for key, fld in reference.fields.items():
            if key.startswith("GGUF."):
                continue
            ours = header.fields[key]
            if isinstance(ours, ArrayRef):
                assert len(ours) == len(fld.data)
                assert read_array_item(f, ours, 201) == fld.contents(201)
                assert read_array_item(f, ours, 0) == fld.contents(0)
            elif isinstance(ours, float):
                assert ours == pytest.approx(fld.contents())
            else:
                assert ours == fld.contents(), key
    assert [t.name for t in header.tensors] == [t.name for t in reference.tensors]
    for ours, ref in zip(header.tensors, reference.tensors, strict=True):
        assert ours.n_elements == ref.n_elements
        assert ours.n_bytes == ref.n_bytes
        assert header.data_offset + ours.offset == ref.data_offset
    info = read_model_info(path)
    assert info.bos_token == "猫" and info.eos_token == "🐱"
    assert info.vocab_size == 202
    assert info.add_bos_token is True
    assert info.rope_freq_base == 500000.0


def test_truncated_file_is_reported(tmp_path: Path, model_path: Path) -> None:
    cut = tmp_path / "partial.gguf"
    cut.write_bytes(model_path.read_bytes()[: 40 * 1024 * 1024])
    with pytest.raises(ModelFileError, match="truncated"):
        read_model_info(cut)
    tiny = tmp_path / "tiny.gguf"
    tiny.write_bytes(model_path.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match=r"truncated|ends inside"):
        read_model_info(tiny)


def test_not_gguf_and_missing(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        read_model_info(text)
    with pytest.raises(ModelFileError, match="not found"):
        read_model_info(tmp_path / "missing.gguf")
    st = tmp_path / "model.safetensors"
    st.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(ModelFileError, match="cattery convert"):
        read_model_info(st)
