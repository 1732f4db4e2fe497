"""HF → GGUF conversion and the way back, checked against llama.cpp and against formulas computed here.

The bundled SmolLM2 (Q4_1) is unpacked to an HF folder and converted back: at F32 every
tensor is bit-for-bit the original's dequantized value and the greedy output is the
dequantized original's; at F16 every tensor is that value rounded to F16 and the
output is that of the original dequantized to F16. Random llamas with trained
SentencePiece tokenizers are run by llama.cpp and by a numpy forward pass written
here the way transformers' LlamaForCausalLM computes (rotate_half RoPE on HF-ordered
weights, GQA by repeating KV heads), so a wrong Q/K permutation shows as wrong logits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.engine.engine import Engine
from app.engine.options import LoadOptions, SamplerSettings
from app.errors import CatteryError
from converters.checkpoint import Checkpoint
from converters.gguf_read import GGUFFile
from converters.hf_to_gguf import convert
from converters.unpack import unpack
from tests.conftest import run_cattery
from tests.gguf_files import add_value
from tests.hf_fixtures import llama3_end_of_turn, random_llama, training_lines, unpacked_bundled

PROMPTS = (
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village,",
    "<|im_start|>user\nWrite a haiku about cats.<|im_end|>\n<|im_start|>assistant\n",
)
GREEDY = SamplerSettings(temperature=0.0, repeat_penalty=1.0, max_tokens=32)
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
IDS = [1, 45, 200, 17, 300, 99, 5, 250, 120, 33, 64, 77]


# -- an independent reference: the HF model in numpy, float64 ------------------------------


def hf_inv_freq(cfg: dict[str, Any]) -> np.ndarray:
    """transformers' RoPE frequencies, with its linear and llama3 scaling."""
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    inv = 1.0 / cfg.get("rope_theta", 10000.0) ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "linear":
        return inv / rs["factor"]
    if kind == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        return np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    return inv


def hf_logits(folder: Path, ids: list[int]) -> np.ndarray:
    cfg = json.loads((folder / "config.json").read_text())
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
    eps = cfg["rms_norm_eps"]
    with Checkpoint.open(folder) as ck:

        def w(name: str) -> np.ndarray:
            return ck.f32(name).astype(np.float64)

        def rms(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
            return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight

        n = len(ids)
        angles = np.outer(np.arange(n), hf_inv_freq(cfg))
        angles = np.concatenate([angles, angles], -1)
        cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]

        def rope(t: np.ndarray) -> np.ndarray:
            half = t.shape[-1] // 2
            return t * cos + np.concatenate([-t[..., half:], t[..., :half]], -1) * sin

        mask = np.triu(np.full((n, n), -np.inf), 1)
        x = w("model.embed_tokens.weight")[ids]
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = rms(x, w(p + "input_layernorm.weight"))
            q = rope((h @ w(p + "self_attn.q_proj.weight").T).reshape(n, nh, hd))
            k = np.repeat(rope((h @ w(p + "self_attn.k_proj.weight").T).reshape(n, nkv, hd)), nh // nkv, axis=1)
            v = np.repeat((h @ w(p + "self_attn.v_proj.weight").T).reshape(n, nkv, hd), nh // nkv, axis=1)
            s = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd) + mask
            a = np.exp(s - s.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            x = x + np.einsum("hqk,khd->qhd", a, v).reshape(n, nh * hd) @ w(p + "self_attn.o_proj.weight").T
            h = rms(x, w(p + "post_attention_layernorm.weight"))
            g = h @ w(p + "mlp.gate_proj.weight").T
            up = h @ w(p + "mlp.up_proj.weight").T
            x = x + (g / (1 + np.exp(-g)) * up) @ w(p + "mlp.down_proj.weight").T
        x = rms(x, w("model.norm.weight"))
        head = "lm_head.weight" if "lm_head.weight" in ck else "model.embed_tokens.weight"
        return x @ w(head).T


def cpp_logits(path: Path, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits at every position, token by token, all in F32 (no flash attention, F32 cache)."""
    import llama_cpp as L

    from app.engine.native import NativeModel

    opts = LoadOptions(ctx=256, threads=2, batch=64, cache_type_k="f32", cache_type_v="f32", flash_attn="off")
    m = NativeModel(path, opts, n_ctx=256, gpu_layers=0, threads=2, threads_batch=2)
    try:
        rows = []
        for t in ids:
            assert m.decode_one(t) == 0
            rows.append(np.ctypeslib.as_array(L.llama_get_logits_ith(m.ctx, -1), shape=(m.n_vocab,)).copy())
        return np.array(rows, dtype=np.float64)
    finally:
        m.close()


def assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
    scale = float(np.abs(ref).max())
    assert np.abs(ours - ref).max() < 1e-5 * scale + 1e-5, (np.abs(ours - ref).max(), scale)


def generate(path: Path, prompts: tuple[str, ...] = PROMPTS, max_tokens: int = 32) -> list[str]:
    eng = Engine()
    try:
        eng.load(path, LoadOptions(ctx=1024, threads=2, batch=256))
        settings = SamplerSettings(temperature=0.0, repeat_penalty=1.0, max_tokens=max_tokens)
        return [eng.generate(p, settings).result() for p in prompts]
    finally:
        eng.close()


def tensors_of(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    import gguf

    g = GGUFFile.open(path)
    return {t.name: (gguf.GGMLQuantizationType(t.ggml_type).name, g.f32(t)) for t in g.tensors}


# -- the bundled model, unpacked and converted back -------------------------------------------


@pytest.fixture(scope="module")
def bundled_hf(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpacked_bundled(tmp_path_factory.mktemp("unpacked"), model_path)


@pytest.fixture(scope="module")
def bundled_f32(bundled_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rt") / "smollm2-f32.gguf"
    convert(bundled_hf, out, outtype="f32")
    return out


@pytest.fixture(scope="module")
def original(model_path: Path) -> GGUFFile:
    return GGUFFile.open(model_path)


def test_unpacked_bundled_model_is_a_checkpoint_with_its_tokenizer(bundled_hf: Path, engine: Engine) -> None:
    from tokenizers import Tokenizer

    from converters.gguf_tokenizer import pre_tokenizer_hash, pre_tokenizers

    cfg = json.loads((bundled_hf / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]) == (9, 3, 30)
    assert cfg["tie_word_embeddings"] is True and cfg["rms_norm_eps"] == 1e-5
    with Checkpoint.open(bundled_hf) as ck:
        assert "lm_head.weight" not in ck and len(ck.names()) == 272
        assert ck.names() == sorted(ck.names())  # as HF's safetensors list them
    tok = Tokenizer.from_file(str(bundled_hf / "tokenizer.json"))
    # the rebuilt tokenizer hashes to the name llama.cpp gave the original (SmolLM's)
    assert pre_tokenizers().by_hash(pre_tokenizer_hash(tok)) == "smollm"
    texts = [pre_tokenizers().check_text, "Hello world, 12345 cats!", "<|im_start|>user\nhi<|im_end|>\n", " x  y\n\tz"]
    for text in texts:  # the tokenizers library and llama.cpp (on the original GGUF) agree
        assert tok.encode(text, add_special_tokens=False).ids == engine.segment_tokenize(text), text
    tok_config = json.loads((bundled_hf / "tokenizer_config.json").read_text())
    assert tok_config["eos_token"] == "<|im_end|>" and tok_config["add_bos_token"] is False
    assert tok_config["chat_template"].startswith("{% for message in messages %}")


def test_unpacked_bundled_model_computes_as_hf_llama_does(bundled_hf: Path, bundled_f32: Path) -> None:
    """Q/K un-permuted right: HF's forward pass in numpy on the unpacked weights gives llama.cpp's logits
    (on the converted file, whose tensors are the original's bit for bit: next test)."""
    ids = [1, 9690, 198, 2683, 314, 260, 3575, 282, 4649, 47, 2]
    assert_close(cpp_logits(bundled_f32, ids), hf_logits(bundled_hf, ids))


def test_round_trip_at_f32_is_exact(
    bundled_f32: Path, original: GGUFFile, model_path: Path, f32_engine: Engine
) -> None:
    ours = GGUFFile.open(bundled_f32)
    assert [t.name for t in ours.tensors] == [t.name for t in original.tensors]  # same order too
    for a, b in zip(ours.tensors, original.tensors, strict=True):
        assert a.shape == b.shape and a.type_name == "F32"
        assert np.array_equal(ours.f32(a), original.f32(b)), a.name
    # every key the original has, with its value; today's converter adds key/value length (head_dim)
    # and, for a ByteLevel post-processor, add_eos_token = false
    extra = {"llama.attention.key_length", "llama.attention.value_length", "tokenizer.ggml.add_eos_token"}
    assert set(ours.keys()) - set(original.keys()) == extra and ours.get("tokenizer.ggml.add_eos_token") is False
    assert set(original.keys()) <= set(ours.keys())
    for key in original:
        if key != "general.file_type":
            assert ours.get(key) == original.get(key), key
    assert ours.get("general.file_type") == 0 and ours.get("llama.attention.key_length") == 64
    # and so llama.cpp generates what it generates with the original dequantized to F32
    assert generate(bundled_f32) == [f32_engine.generate(p, GREEDY).result() for p in PROMPTS]


def _f16_reference(original: GGUFFile, dst: Path) -> Path:
    """The original dequantized and rounded to F16 (norms F32), with its own metadata: made with gguf-py here."""
    import gguf

    w = gguf.GGUFWriter(str(dst), "llama")
    for key in original:
        if key not in ("general.architecture", "general.alignment"):
            value = original.get(key)
            add_value(w, key, 1 if key == "general.file_type" else value)
    for t in original.tensors:
        data = original.f32(t)
        w.add_tensor(t.name, data if data.ndim == 1 else data.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def test_round_trip_at_f16_is_the_original_rounded_to_f16(bundled_hf: Path, original: GGUFFile, tmp_path: Path) -> None:
    out = tmp_path / "smollm2-f16.gguf"
    report = convert(bundled_hf, out, outtype="f16")
    assert report.types == {"F16": 211, "F32": 61} and report.pre_tokenizer == "smollm"
    ours = GGUFFile.open(out)
    assert ours.get("general.file_type") == 1
    for a, b in zip(ours.tensors, original.tensors, strict=True):
        want = original.f32(b)
        if want.ndim > 1:
            assert a.type_name == "F16" and np.array_equal(
                ours.raw(a).view(np.float16), want.astype(np.float16).ravel()
            )
        else:
            assert a.type_name == "F32" and np.array_equal(ours.f32(a), want)
    assert ours.get("tokenizer.ggml.tokens") == original.get("tokenizer.ggml.tokens")
    assert ours.get("tokenizer.ggml.merges") == original.get("tokenizer.ggml.merges")
    reference = _f16_reference(original, tmp_path / "reference-f16.gguf")
    assert generate(out) == generate(reference)


# -- random llamas: llama.cpp against HF's computation ---------------------------------------


@pytest.mark.parametrize(
    "shape",
    [
        {"n_head": 4, "n_kv_head": 4},  # MHA
        {"n_head": 4, "n_kv_head": 2},  # GQA, untied
        {"n_head": 8, "n_kv_head": 2, "tied": True},
        {"rope_scaling": {"type": "linear", "factor": 4.0}},
        {"rope_scaling": LLAMA3},
        {"added_tokens": [("<|user|>", False), ("▁Cattery", False), ("<extra_0>", True)]},
    ],
    ids=["mha", "gqa", "gqa-tied", "linear-rope", "llama3-rope", "added-tokens"],
)
def test_llama_cpp_computes_what_hf_computes(shape: dict[str, Any], tmp_path: Path) -> None:
    folder = random_llama(tmp_path / "model", **shape)
    out = tmp_path / "model.gguf"
    convert(folder, out, outtype="f32")
    ref = hf_logits(folder, IDS)
    assert_close(cpp_logits(out, IDS), ref)
    # and the logits depend on the permutation: unpermuted Q/K would give something else entirely
    g = GGUFFile.open(out)
    assert ("output.weight" in [t.name for t in g.tensors]) is not shape.get("tied", False)
    assert generate(out, ("Hello",), max_tokens=4)  # it loads and generates through the engine


def test_a_wrong_permutation_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ×10 Q/K scale makes attention sharp enough that skipping the permutation moves logits a lot."""
    import converters.gguf_tensors as tensors

    folder = random_llama(tmp_path / "model")
    ref = hf_logits(folder, IDS)
    monkeypatch.setattr(tensors, "permute", lambda w, n_head: w)
    convert(folder, tmp_path / "wrong.gguf", outtype="f32")
    wrong = cpp_logits(tmp_path / "wrong.gguf", IDS)
    assert np.abs(wrong - ref).max() > 0.1 * np.abs(ref).max()


def test_rope_scaling_metadata(tmp_path: Path) -> None:
    linear = random_llama(tmp_path / "linear", rope_scaling={"type": "linear", "factor": 4.0})
    convert(linear, tmp_path / "linear.gguf")
    g = GGUFFile.open(tmp_path / "linear.gguf")
    assert (g.get("llama.rope.scaling.type"), g.get("llama.rope.scaling.factor")) == ("linear", 4.0)

    yarn_cfg = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128, "beta_fast": 32.0}
    yarn = random_llama(tmp_path / "yarn", rope_scaling=yarn_cfg)
    convert(yarn, tmp_path / "yarn.gguf")
    g = GGUFFile.open(tmp_path / "yarn.gguf")
    assert g.get("llama.rope.scaling.type") == "yarn" and g.get("llama.rope.scaling.original_context_length") == 128
    assert g.get("llama.rope.scaling.yarn_beta_fast") == 32.0
    assert generate(tmp_path / "yarn.gguf", ("Hi",), max_tokens=2)

    l3 = random_llama(tmp_path / "l3", rope_scaling=LLAMA3)
    convert(l3, tmp_path / "l3.gguf")
    g = GGUFFile.open(tmp_path / "l3.gguf")
    assert g.tensors[0].name == "rope_freqs.weight" and "llama.rope.scaling.type" not in g
    cfg = json.loads((l3 / "config.json").read_text())
    plain = hf_inv_freq({**cfg, "rope_scaling": None})
    expected = plain / hf_inv_freq(cfg)  # llama.cpp divides each frequency by its factor
    assert np.allclose(g.f32(g.tensors[0]), expected, rtol=1e-6)
    assert 1.0 in expected and 8.0 in expected and ((expected > 1) & (expected < 8)).any()


# -- metadata and types -------------------------------------------------------------------------

# The keys llama.cpp's convert_hf_to_gguf.py writes for a SentencePiece llama, in its order:
# the writer's architecture, then prepare_metadata (type, the model card's names, the model's
# parameters, the quantization version), then set_vocab (tokenizer, SpecialVocab's specials).
LLAMA_SPM_KEYS = [
    ("general.architecture", "STRING"),
    ("general.type", "STRING"),
    ("general.name", "STRING"),
    ("general.size_label", "STRING"),
    ("llama.block_count", "UINT32"),
    ("llama.context_length", "UINT32"),
    ("llama.embedding_length", "UINT32"),
    ("llama.feed_forward_length", "UINT32"),
    ("llama.attention.head_count", "UINT32"),
    ("llama.attention.head_count_kv", "UINT32"),
    ("llama.rope.freq_base", "FLOAT32"),
    ("llama.attention.layer_norm_rms_epsilon", "FLOAT32"),
    ("llama.attention.key_length", "UINT32"),
    ("llama.attention.value_length", "UINT32"),
    ("general.file_type", "UINT32"),
    ("llama.vocab_size", "UINT32"),
    ("llama.rope.dimension_count", "UINT32"),
    ("general.quantization_version", "UINT32"),
    ("tokenizer.ggml.model", "STRING"),
    ("tokenizer.ggml.pre", "STRING"),
    ("tokenizer.ggml.tokens", "ARRAY"),
    ("tokenizer.ggml.scores", "ARRAY"),
    ("tokenizer.ggml.token_type", "ARRAY"),
    ("tokenizer.ggml.bos_token_id", "UINT32"),
    ("tokenizer.ggml.eos_token_id", "UINT32"),
    ("tokenizer.ggml.add_bos_token", "BOOL"),
    ("tokenizer.ggml.add_eos_token", "BOOL"),
]


def test_metadata_keys_types_and_order_are_the_converters(tmp_path: Path) -> None:
    import gguf

    folder = random_llama(tmp_path / "tiny-cat", n_head=4, n_kv_head=2, rope_theta=None)
    out = tmp_path / "tiny.gguf"
    convert(folder, out)
    reader = gguf.GGUFReader(out)
    keys = [(k, f.types[0].name) for k, f in reader.fields.items() if not k.startswith("GGUF.")]
    assert keys == LLAMA_SPM_KEYS
    g = GGUFFile.open(out)
    assert g.get("llama.rope.freq_base") == 10000.0  # rope_theta missing, as AutoConfig fills it
    assert g.get("llama.attention.key_length") == 16 == g.get("llama.rope.dimension_count")
    # no model card: the name comes from the folder, the size label from the parameter count
    assert g.get("general.name") == "Tiny Cat" and g.get("general.size_label") == "113K"
    assert reader.fields["tokenizer.ggml.token_type"].types[-1].name == "INT32"
    assert reader.fields["tokenizer.ggml.scores"].types[-1].name == "FLOAT32"


def test_missing_kv_heads_means_as_many_as_heads(tmp_path: Path) -> None:
    folder = random_llama(tmp_path / "m", n_head=4, n_kv_head=4)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["num_key_value_heads"]
    (folder / "config.json").write_text(json.dumps(cfg))
    convert(folder, tmp_path / "m.gguf", outtype="f32")
    assert GGUFFile.open(tmp_path / "m.gguf").get("llama.attention.head_count_kv") == 4
    assert_close(cpp_logits(tmp_path / "m.gguf", IDS), hf_logits(folder, IDS))


def test_outtypes(tmp_path: Path) -> None:
    import gguf

    # F32 source: auto → F16; the down projection's rows (40) are not Q8_0 blocks, so it falls back to F16
    f32 = random_llama(tmp_path / "f32", ffn=40)
    r = convert(f32, tmp_path / "auto.gguf")
    assert r.outtype == "f16" and GGUFFile.open(tmp_path / "auto.gguf").get("general.file_type") == 1
    r = convert(f32, tmp_path / "q8.gguf", outtype="q8_0")
    types = {n: t for n, (t, _) in tensors_of(tmp_path / "q8.gguf").items()}
    assert types["blk.0.ffn_down.weight"] == "F16" and types["blk.0.ffn_gate.weight"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == "F32" and types["token_embd.weight"] == "Q8_0"
    assert GGUFFile.open(tmp_path / "q8.gguf").get("general.file_type") == 7
    q8 = tensors_of(tmp_path / "q8.gguf")
    with Checkpoint.open(f32) as ck:
        src = ck.f32("model.layers.0.mlp.gate_proj.weight")
    # Q8_0: each block of 32 within half a step (d = max/127) of its values, plus the rounding of d to F16
    blocks = src.reshape(-1, 32)
    step = np.abs(blocks).max(axis=1, keepdims=True) / 127
    err = np.abs(q8["blk.0.ffn_gate.weight"][1].reshape(-1, 32) - blocks)
    assert (err <= step * (0.5 + 127 / 2048)).all() and err.max() > 0
    assert generate(tmp_path / "q8.gguf", ("Hi",), max_tokens=2)

    # BF16 source: auto → BF16, the stored words unchanged
    bf16 = random_llama(tmp_path / "bf16", dtype="BF16")
    r = convert(bf16, tmp_path / "bf16.gguf")
    assert r.outtype == "bf16" and GGUFFile.open(tmp_path / "bf16.gguf").get("general.file_type") == 32
    g = GGUFFile.open(tmp_path / "bf16.gguf")
    info = next(t for t in g.tensors if t.name == "blk.1.ffn_up.weight")
    with Checkpoint.open(bf16) as ck:
        assert np.array_equal(g.raw(info).view(np.uint16), ck.raw("model.layers.1.mlp.up_proj.weight").ravel())
    assert gguf.GGMLQuantizationType(info.ggml_type).name == "BF16"
    assert generate(tmp_path / "bf16.gguf", ("Hi",), max_tokens=2)

    f16 = random_llama(tmp_path / "f16", dtype="F16")
    assert convert(f16, tmp_path / "f16.gguf").outtype == "f16"


# -- tokenizers ----------------------------------------------------------------------------------


def test_sentencepiece_vocabulary_scores_types_and_tokenization(tmp_path: Path) -> None:
    from sentencepiece import SentencePieceProcessor

    from app.engine.native import VocabModel

    folder = random_llama(tmp_path / "sp")
    convert(folder, tmp_path / "sp.gguf")
    sp = SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    g = GGUFFile.open(tmp_path / "sp.gguf")
    tokens, scores, types = (g.get(f"tokenizer.ggml.{k}") for k in ("tokens", "scores", "token_type"))
    assert g.get("tokenizer.ggml.model") == "llama" and len(tokens) == sp.vocab_size()
    for i in range(3, sp.vocab_size()):
        assert tokens[i] == sp.IdToPiece(i) and np.float32(scores[i]) == np.float32(sp.GetScore(i))
        assert types[i] == (6 if sp.IsByte(i) else 1)
    # <unk>, <s>, </s> are in added_tokens_decoder (special): CONTROL with score -1000
    assert types[:3] == [3, 3, 3] and scores[:3] == [-1000.0] * 3
    vocab = VocabModel(tmp_path / "sp.gguf")
    try:
        for line in [*training_lines(40, seed=5), "Hello wörld ☃ 123456 \t tabs  double  spaces", "\n\nx\n"]:
            assert vocab.tokenize(line, add_special=True, parse_special=False) == [1, *sp.encode(line)], line
    finally:
        vocab.close()


def test_added_tokens_are_control_when_they_look_special(tmp_path: Path) -> None:
    from app.engine.native import VocabModel

    added = [("<|user|>", False), ("▁Cattery", False), ("<extra_0>", True)]
    folder = random_llama(tmp_path / "m", added_tokens=added)
    convert(folder, tmp_path / "m.gguf")
    g = GGUFFile.open(tmp_path / "m.gguf")
    tokens, types = g.get("tokenizer.ggml.tokens"), g.get("tokenizer.ggml.token_type")
    n = len(tokens) - 3
    assert tokens[n:] == ["<|user|>", " Cattery", "<extra_0>"]  # ▁ became a space in the user-defined one
    assert types[n:] == [3, 4, 3]
    vocab = VocabModel(tmp_path / "m.gguf")
    try:
        ids = vocab.tokenize("Hi<|user|>there<extra_0>", add_special=False, parse_special=True)
        assert n in ids and n + 2 in ids
    finally:
        vocab.close()


@pytest.fixture
def bpe_model(bundled_hf: Path, tmp_path: Path) -> Path:
    """A small random llama with the bundled model's BPE tokenizer (49152 tokens)."""
    return random_llama(tmp_path / "bpe", hidden=32, ffn=32, n_head=2, n_kv_head=1, n_layer=1, bpe_from=bundled_hf)


def test_bpe_special_tokens_and_eos_from_tokenizer_config(bpe_model: Path, tmp_path: Path) -> None:
    cfg = json.loads((bpe_model / "config.json").read_text())
    cfg["eos_token_id"] = 0  # tokenizer_config.json says <|im_end|> (2): that wins
    (bpe_model / "config.json").write_text(json.dumps(cfg))
    r = convert(bpe_model, tmp_path / "bpe.gguf")
    assert (r.tokenizer, r.pre_tokenizer) == ("gpt2", "smollm")
    g = GGUFFile.open(tmp_path / "bpe.gguf")
    assert g.get("tokenizer.ggml.eos_token_id") == 2 and g.get("tokenizer.ggml.bos_token_id") == 1
    assert g.get("tokenizer.ggml.add_bos_token") is False and g.get("tokenizer.ggml.pre") == "smollm"
    assert g.get("tokenizer.ggml.add_eos_token") is False  # a ByteLevel post-processor adds nothing (llama.cpp)
    assert g.get("tokenizer.chat_template").startswith("{% for message in messages %}")


def test_unknown_pre_tokenizer_stops_with_its_hash_and_can_be_named(bpe_model: Path, tmp_path: Path) -> None:
    data = json.loads((bpe_model / "tokenizer.json").read_text())
    data["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = True  # a space before the first word
    (bpe_model / "tokenizer.json").write_text(json.dumps(data))
    out = tmp_path / "x.gguf"
    r = run_cattery("convert", str(bpe_model), "-o", str(out))
    assert r.returncode != 0 and not out.exists()
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cattery: error: ")
    assert "pre-tokenizer not recognized" in lines[0] and "--pre-tokenizer NAME" in lines[0]
    from tokenizers import Tokenizer

    from converters.gguf_tokenizer import pre_tokenizer_hash

    assert pre_tokenizer_hash(Tokenizer.from_file(str(bpe_model / "tokenizer.json"))) in lines[0]
    r = run_cattery("convert", str(bpe_model), "-o", str(out), "--pre-tokenizer", "gpt-2")
    assert r.returncode == 0, r.stderr
    assert "pre-tokenizer gpt-2" in r.stdout and GGUFFile.open(out).get("tokenizer.ggml.pre") == "gpt-2"
    with pytest.raises(CatteryError, match=r"not a pre-tokenizer llama\.cpp knows"):
        convert(bpe_model, out, pre_tokenizer="no-such-thing")


def test_llama3_style_end_of_turn_stops(bpe_model: Path, tmp_path: Path) -> None:
    """A Llama-3-Instruct-like tokenizer whose EOS is the end of text: <|eot_id|> ends a turn.

    As llama.cpp's converter, no EOT key is written: llama.cpp finds the token by its text.
    """
    from app.engine.native import VocabModel

    llama3_end_of_turn(bpe_model)
    convert(bpe_model, tmp_path / "l3.gguf")
    g = GGUFFile.open(tmp_path / "l3.gguf")
    assert g.get("tokenizer.ggml.eos_token_id") == 0 and g.get("tokenizer.ggml.eot_token_id") is None
    v = VocabModel(tmp_path / "l3.gguf")
    try:
        assert v.is_eog(3) and v.is_eog(0)
    finally:
        v.close()


# -- chat templates ------------------------------------------------------------------------------


def test_every_prompt_format_as_a_chat_template_renders_like_the_format() -> None:
    from app.prompt.formats import available_formats
    from app.prompt.segments import Message, Speakers, render_format, render_template
    from converters.gguf_chat_format import chat_template

    history = [
        Message("user", "Hi there"),
        Message("assistant", "Hello! How can I help?"),
        Message("user", "Tell me about cats."),
        Message("system", "Keep it short."),
        Message("assistant", "Cats purr."),
    ]
    for fmt in available_formats().values():
        template = chat_template(fmt)
        for system in ("You are a cat.", None):
            want = render_format(fmt, system, history, Speakers())
            got = render_template(template, system, history, bos_token="<s>", eos_token="</s>")
            assert (got.pinned, got.turns, got.generation) == (want.pinned, want.turns, want.generation), fmt.name
            assert got.segmentable


def test_chat_format_is_written_into_the_gguf(tmp_path: Path) -> None:
    from app.engine.metadata import read_model_info
    from app.prompt.formats import get_format
    from converters.gguf_chat_format import chat_template

    folder = random_llama(tmp_path / "m", chat_template="{{ messages[0]['content'] }}")
    r = convert(folder, tmp_path / "own.gguf")
    assert r.chat_template == "tokenizer_config.json"
    assert read_model_info(tmp_path / "own.gguf").chat_template == "{{ messages[0]['content'] }}"
    r = convert(folder, tmp_path / "m.gguf", chat_format="metharme")
    assert "metharme" in r.summary()
    assert read_model_info(tmp_path / "m.gguf").chat_template == chat_template(get_format("metharme"))


def test_chat_template_from_chat_template_jinja(tmp_path: Path) -> None:
    folder = random_llama(tmp_path / "m")
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    convert(folder, tmp_path / "m.gguf")
    assert GGUFFile.open(tmp_path / "m.gguf").get("tokenizer.chat_template").startswith("{% for m in messages")


# -- unpack --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [{}, {"rope_scaling": LLAMA3, "tied": True, "dtype": "BF16"}], ids=["sp", "llama3"])
def test_unpack_then_convert_gives_the_same_gguf(shape: dict[str, Any], tmp_path: Path) -> None:
    from sentencepiece import SentencePieceProcessor

    added = [("<|user|>", False), ("<extra_0>", True)]
    folder = random_llama(tmp_path / "model", added_tokens=added, **shape)
    first = tmp_path / "first.gguf"
    convert(folder, first)
    back = unpack(first, tmp_path / "unpacked")
    second = tmp_path / "second.gguf"
    convert(back, second)
    a, b = GGUFFile.open(first), GGUFFile.open(second)
    assert a.keys() == b.keys()
    for key in a:
        assert a.get(key) == b.get(key), key
    ta, tb = tensors_of(first), tensors_of(second)
    assert list(ta) == list(tb)
    for name in ta:
        assert ta[name][0] == tb[name][0]
        if name == "rope_freqs.weight":  # rebuilt from fitted llama3 parameters
            assert np.allclose(ta[name][1], tb[name][1], rtol=1e-5)
        else:
            assert np.array_equal(ta[name][1], tb[name][1]), name
    # the rebuilt tokenizer.model is SentencePiece's own model: it encodes as the original does
    sp1 = SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    sp2 = SentencePieceProcessor(model_file=str(back / "tokenizer.model"))
    for line in training_lines(30, seed=7):
        assert sp1.encode(line) == sp2.encode(line)


def test_unpack_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    from tests.gguf_files import write_gguf

    with pytest.raises(CatteryError, match="only llama-architecture"):
        unpack(write_gguf(tmp_path / "g.gguf", arch="gemma"), tmp_path / "out")
    with pytest.raises(CatteryError, match="not a readable GGUF"):
        (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
        unpack(tmp_path / "junk.gguf", tmp_path / "out2")


# -- user errors and interruption ------------------------------------------------------------------


def test_conversion_errors_are_one_line(tmp_path: Path) -> None:
    folder = random_llama(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(CatteryError, match="only llama-family models"):
        convert(folder, tmp_path / "x.gguf")
    (folder / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(CatteryError, match=r"model\.layers\.2\..* is missing"):
        convert(folder, tmp_path / "x.gguf")
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "tokenizer.model").unlink()
    r = run_cattery("convert", str(folder), "-o", str(tmp_path / "x.gguf"))
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0
    assert "no tokenizer" in r.stderr and not (tmp_path / "x.gguf").exists()


def test_an_interrupted_conversion_leaves_no_file(tmp_path: Path) -> None:
    folder = random_llama(tmp_path / "m")
    out = tmp_path / "m.gguf"

    def stop(done: int, total: int, what: str, nbytes: int, total_bytes: int) -> None:
        if done == 5:
            assert 0 < nbytes < total_bytes  # the bytes written so far of the file's tensor data
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(folder, out, progress=stop)
    assert list(tmp_path.glob("*.gguf*")) == [] and list(tmp_path.glob(".*")) == []


def test_cli_convert_and_unpack(tmp_path: Path) -> None:
    folder = random_llama(tmp_path / "m")
    out = tmp_path / "m.gguf"
    r = run_cattery("convert", str(folder), "-o", str(out), "--outtype", "q8_0", "--chat-format", "chatml")
    assert r.returncode == 0, r.stderr
    assert "21 tensors" in r.stdout and "Q8_0" in r.stdout and "chatml" in r.stdout
    r = run_cattery("unpack", str(out), "-o", str(tmp_path / "back"), "--dtype", "f16")
    assert r.returncode == 0, r.stderr
    with Checkpoint.open(tmp_path / "back") as ck:
        assert ck.tensors["model.layers.0.mlp.up_proj.weight"].dtype == "F16"
        assert ck.tensors["model.norm.weight"].dtype == "F32"
        assert {p.name for p in ck.tokenizer_files()} >= {"tokenizer.model", "tokenizer_config.json"}
    assert json.loads((tmp_path / "back" / "tokenizer_config.json").read_text())["chat_template"].startswith("{#-")


def test_fast_conversions_give_gguf_pys_bytes() -> None:
    """The converter's own F16/BF16 rounding and BF16 widening against gguf-py's and numpy's, specials included."""
    import gguf

    from converters.gguf_tensors import to_bf16, to_f16, widen_bf16

    rng = np.random.default_rng(0)
    special = [0, -0.0, 1e-8, -6.1e-5, 5.96e-8, 2.98e-8, 65504, 65519.99, 65520, -1e9, np.inf, -np.inf, np.nan]
    special += [1.00390625, 1.005859375, 3.4e38, 1e-40]
    data = np.concatenate(
        [
            (rng.standard_normal(50_000) * 0.02).astype(np.float32),
            rng.integers(0, 2**32, 49_983, dtype=np.uint32).view(np.float32),  # every kind of bit pattern
            np.array(special, dtype=np.float32),
        ]
    ).reshape(-1, 100)
    with np.errstate(all="ignore"):
        assert np.array_equal(to_f16(data).view(np.uint16), data.astype(np.float16).view(np.uint16))
        want = gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16).view(np.uint16)
    assert np.array_equal(to_bf16(data), want)
    words = rng.integers(0, 2**16, (7, 9), dtype=np.uint16)
    assert np.array_equal(widen_bf16(words).view(np.uint32), words.astype(np.uint32) << 16)


def test_a_merged_source_converts_like_its_checkpoint(tmp_path: Path) -> None:
    """convert_source on any checkpoint-shaped object (what a merge passes) writes the same bytes."""
    from converters.hf_to_gguf import convert_source

    folder = random_llama(tmp_path / "m", dtype="BF16")
    convert(folder, tmp_path / "a.gguf", outtype="f16")

    class Lazy:  # only what convert_source may use
        def __init__(self, ck: Checkpoint) -> None:
            self.config, self.tensors, self._ck = ck.config, ck.tensors, ck

        def names(self) -> list[str]:
            return self._ck.names()

        def f32(self, name: str) -> np.ndarray:
            return self._ck.f32(name)

    with Checkpoint.open(folder) as ck:
        convert_source(Lazy(ck), folder, tmp_path / "b.gguf", outtype="f16")
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_the_llama_layout_table_agrees_with_gguf_py() -> None:
    """converters/llama_layout.py's GGUF names are the ones gguf-py's map (llama.cpp's converter) gives."""
    from converters.gguf_tensors import hf_names_by_gguf
    from converters.llama_layout import GLOBAL, LAYER

    by_gguf = hf_names_by_gguf(2)
    for m in GLOBAL:
        assert by_gguf[f"{m.gguf}.weight"] == f"{m.hf}.weight"
    for m in LAYER:
        for param in m.params:
            assert by_gguf[f"blk.1.{m.gguf}.{param}"] == f"model.layers.1.{m.hf}.{param}"
