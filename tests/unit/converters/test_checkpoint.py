"""Checkpoints read lazily from safetensors (bf16 included) and written tensor by tensor in shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from converters.checkpoint import Checkpoint, CheckpointError, ShardedWriter, TensorPlan, to_dtype


def test_round_trip_through_shards_reads_back_with_the_safetensors_package(tmp_path: Path) -> None:
    from safetensors import safe_open

    rng = np.random.default_rng(0)
    tensors = {
        "model.embed_tokens.weight": rng.standard_normal((64, 16)).astype(np.float32),
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((16, 16)).astype(np.float32),
        "model.norm.weight": np.ones(16, dtype=np.float32),
    }
    plan = [TensorPlan(n, "F16" if a.ndim == 2 else "F32", a.shape) for n, a in tensors.items()]
    folder = tmp_path / "out"
    (folder).mkdir()
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 1}))
    with ShardedWriter(folder, plan, max_shard=2100) as w:
        for name, data in tensors.items():
            w.write(name, data)
        files = w.close()
    assert len(files) == 2 and not list(folder.glob(".*partial"))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    ck = Checkpoint.open(folder)
    for name, data in tensors.items():
        assert np.allclose(ck.f32(name), data, atol=2e-3)
    with safe_open(str(files[0]), framework="numpy") as f:  # the reference reader agrees
        for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            assert np.array_equal(f.get_tensor(name), ck.raw(name))


def test_bf16_is_rounded_like_torch_and_widened_back(tmp_path: Path) -> None:
    values = np.array([1.0, 1.00390625, 1.005859375, -2.5, 3.0e38, 1e-40], dtype=np.float32)
    words = to_dtype(values, "BF16")
    back = (words.astype(np.uint32) << 16).view(np.float32)
    assert back[0] == 1.0 and back[1] == 1.0  # ties go to even
    assert back[2] == 1.0078125 and back[3] == -2.5
    # every NaN is torch's 0x7FC0, even one whose rounding would carry into the exponent (inf)
    nans = np.array([0x7F800001, 0xFFFFFFFF, 0x7FC00000], dtype=np.uint32).view(np.float32)
    assert to_dtype(nans, "BF16").tolist() == [0x7FC0] * 3
    # chunked rounding over several chunks is the whole-array formula
    many = np.random.default_rng(0).standard_normal((3, 700_001)).astype(np.float32)
    u = many.view(np.uint32)
    assert np.array_equal(to_dtype(many, "BF16"), ((u + ((u >> 16) & 1) + 0x7FFF) >> 16).astype(np.uint16))
    folder = tmp_path / "bf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with ShardedWriter(folder, [TensorPlan("w", "BF16", values.shape)]) as w:
        w.write("w", values)
        w.close()
    assert np.array_equal(Checkpoint.open(folder).f32("w"), back)


def test_bad_checkpoints_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        Checkpoint.open(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="never unpickles"):
        Checkpoint.open(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        Checkpoint.open(tmp_path)
    with pytest.raises(ValueError, match="planned order"):
        w = ShardedWriter(tmp_path / "o", [TensorPlan("a", "F32", (1,)), TensorPlan("b", "F32", (1,))])
        w.write("b", np.zeros(1, dtype=np.float32))
