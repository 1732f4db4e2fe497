"""Merges checked against their formulas, computed here independently in float64.

The checkpoints are small random llama models written in the test (sharded, tensors in the
alphabetical order safetensors files use), the adapters real PEFT-format folders.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.errors import CatteryError
from converters.checkpoint import Checkpoint, ShardedWriter, TensorPlan, to_dtype
from converters.llama_layout import LAYER_MODULES
from converters.merge import merge, plan_merge, run_merge
from converters.merge_order import module_order
from converters.merge_recipe import RecipeError, load_recipe, parse_recipe
from tests.conftest import run_cattery
from tests.llama_checkpoints import make_adapter, make_llama, read_out

TOL = 1e-6


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def mergekit_t(name: str, layers: int) -> float:
    """mergekit 0.1.5's t: layer i of n at i / (n - 1); both ends (embeddings, final norm, lm_head) at 0."""
    if ".layers." in name:
        return int(name.split(".")[2]) / (layers - 1)
    return 0.0


def gradient_value(values: list[float], t: float) -> float:
    """Piecewise-linear between evenly spaced points, worked out here with numpy's interp."""
    return float(np.interp(t, np.linspace(0, 1, len(values)), values))


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want) or set(got) == set(want)
    for n in want:
        assert got[n].shape == want[n].shape, n
        np.testing.assert_allclose(got[n], want[n], rtol=TOL, atol=TOL, err_msg=n)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("models")
    return {
        "root": root,
        "a": make_llama(root / "a", seed=1),
        "b": make_llama(root / "b", seed=2),
        "c": make_llama(root / "c", seed=3),
    }


# -- order --------------------------------------------------------------------------------


def test_module_order_is_the_state_dict_order_not_the_file_order(tmp_path: Path) -> None:
    make_llama(tmp_path / "m", seed=0, layers=12, hidden=4, heads=2, kv_heads=1, inter=4, vocab=8, max_shard=600)
    ck = Checkpoint.open(tmp_path / "m")
    expected = ["model.embed_tokens.weight"]
    for i in range(12):
        expected += [f"model.layers.{i}.{m}.weight" for m in LAYER_MODULES]
    expected += ["model.norm.weight", "lm_head.weight"]
    assert ck.names() != expected  # the files list layers.10 before layers.2, k_proj before q_proj
    assert ck.names().index("model.layers.10.mlp.down_proj.weight") < ck.names().index(
        "model.layers.2.mlp.down_proj.weight"
    )
    assert module_order(ck.names()) == expected
    # biases follow their weights, as nn.Linear registers them
    assert module_order(
        ["model.layers.0.self_attn.k_proj.bias", "model.layers.0.self_attn.q_proj.bias", *expected[:3]]
    )[1:4] == ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias", expected[2]]


# -- LoRA ---------------------------------------------------------------------------------


def test_lora_at_a_weight_with_patterns_rslora_embeddings_and_modules_to_save(
    models: dict[str, Any], tmp_path: Path
) -> None:
    a = models["a"]
    new_head = np.random.default_rng(9).standard_normal(a["lm_head.weight"].shape)
    ad1 = make_adapter(
        tmp_path / "lora1",
        a,
        seed=11,
        r=4,
        alpha=8,
        ranks={"k_proj": 2},
        config={"rank_pattern": {"k_proj": 2}, "alpha_pattern": {"layers.1.self_attn.v_proj": 3}},
        embedding=True,
        saved={"lm_head.weight": new_head},
    )
    ad2 = make_adapter(
        tmp_path / "lora2", a, seed=12, r=9, alpha=6, targets=("up_proj", "q_proj"), config={"use_rslora": True}
    )
    recipe = write_recipe(
        tmp_path / "r.toml",
        f"""
base = "{models["root"] / "a"}"
[[steps]]
method = "lora"
adapter = "lora1"
weight = 0.25
[[steps]]
method = "lora"
adapter = "lora2"
weight = 0.5
""",
    )
    out = run_merge(recipe, tmp_path / "out")
    want = {n: w.copy() for n, w in a.items()}
    for name in want:
        module = name.removesuffix(".weight")
        key = f"base_model.model.{module}"
        if key + ".lora_A.weight" in ad1:
            r = 2 if module.endswith("k_proj") else 4
            alpha = 3 if module == "model.layers.1.self_attn.v_proj" else 8
            want[name] += 0.25 * (alpha / r) * (ad1[key + ".lora_B.weight"] @ ad1[key + ".lora_A.weight"])
        if key + ".lora_A.weight" in ad2:
            want[name] += 0.5 * (6 / math.sqrt(9)) * (ad2[key + ".lora_B.weight"] @ ad2[key + ".lora_A.weight"])
    emb = "base_model.model.model.embed_tokens."
    want["model.embed_tokens.weight"] += 0.25 * 2 * (ad1[emb + "lora_embedding_B"] @ ad1[emb + "lora_embedding_A"]).T
    want["lm_head.weight"] = new_head.astype(np.float32).astype(np.float64)  # replaced, whatever the weight
    got = read_out(out)
    assert_close(got, want)
    np.testing.assert_array_equal(got["model.norm.weight"], a["model.norm.weight"])


def test_adapters_that_cannot_be_merged_right_are_refused(models: dict[str, Any], tmp_path: Path) -> None:
    from converters.checkpoint import CheckpointError
    from converters.merge_lora import LoraAdapter

    make_adapter(tmp_path / "dora", models["a"], seed=1, config={"use_dora": True})
    with pytest.raises(CheckpointError, match="DoRA"):
        LoraAdapter.open(tmp_path / "dora")
    make_adapter(tmp_path / "wrong-rank", models["a"], seed=1, ranks={"q_proj": 3})
    with pytest.raises(CheckpointError, match="rank 4 but lora A has 3 rows"):
        LoraAdapter.open(tmp_path / "wrong-rank")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "adapter_config.json").write_text('{"r": 8}')
    (tmp_path / "pickled" / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match=r"never unpickles.*adapter_model\.safetensors"):
        LoraAdapter.open(tmp_path / "pickled")
    other = make_llama(tmp_path / "other", seed=5, hidden=8, heads=2, kv_heads=1, inter=8)
    make_adapter(tmp_path / "for-other", other, seed=1)
    recipe = parse_recipe(
        {"base": str(models["root"] / "a"), "steps": [{"method": "lora", "adapter": str(tmp_path / "for-other")}]},
        tmp_path,
    )
    with pytest.raises(RecipeError, match="an adapter for another model"):
        plan_merge(recipe)


# -- linear, gradients, SLERP --------------------------------------------------------------


def test_linear_of_three_with_per_layer_and_filtered_weights(models: dict[str, Any], tmp_path: Path) -> None:
    root = models["root"]
    recipe = write_recipe(
        tmp_path / "r.toml",
        f"""
base = "{root / "a"}"
[[steps]]
method = "linear"
models = ["{root / "b"}", "{root / "c"}"]
weights = [1.0, [0.0, 1.0], [{{filter = "mlp", value = 0.5}}, {{value = 2.0}}]]
""",
    )
    got = read_out(run_merge(recipe, tmp_path / "out"))
    want = {}
    for n in models["a"]:
        w = [1.0, mergekit_t(n, 3), 0.5 if "mlp" in n else 2.0]
        want[n] = sum(wi * models[k][n] for wi, k in zip(w, "abc", strict=True)) / sum(w)
    assert_close(got, want)

    recipe = parse_recipe(
        {
            "base": str(root / "a"),
            "steps": [{"method": "linear", "models": [str(root / "b")], "weights": [0.3, 0.5], "normalize": False}],
        },
        tmp_path,
    )
    got = read_out(merge(recipe, tmp_path / "plain").path)
    assert_close(got, {n: 0.3 * models["a"][n] + 0.5 * models["b"][n] for n in models["a"]})


def test_layer_gradient_as_mergekit_with_filters(models: dict[str, Any], tmp_path: Path) -> None:
    root = models["root"]
    attn, rest = [0.0, 0.5, 0.3, 0.7, 1.0], [0.9, 0.2, 0.0]
    recipe = parse_recipe(
        {
            "base": str(root / "a"),
            "steps": [
                {
                    "method": "gradient",
                    "mode": "layer",
                    "model": str(root / "b"),
                    "values": [{"filter": "self_attn", "value": attn}, {"value": rest}],
                }
            ],
        },
        tmp_path,
    )
    model = plan_merge(recipe)
    expected_v = {
        n: gradient_value(attn if "self_attn" in n else rest, mergekit_t(n, 3)) for n in module_order(models["a"])
    }
    assert model.steps[0].params == pytest.approx(expected_v, abs=1e-12)
    # the embeddings, the final norm and lm_head all sit at t = 0, as mergekit 0.1.5's planner puts them
    assert model.steps[0].params["model.embed_tokens.weight"] == pytest.approx(0.9)
    assert model.steps[0].params["lm_head.weight"] == pytest.approx(0.9)
    assert model.steps[0].params["model.layers.1.self_attn.q_proj.weight"] == pytest.approx(0.3)
    assert model.steps[0].params["model.layers.1.mlp.up_proj.weight"] == pytest.approx(0.2)
    got = read_out(merge(recipe, tmp_path / "out").path)
    assert_close(got, {n: (1 - v) * models["a"][n] + v * models["b"][n] for n, v in expected_v.items()})


def blockmerge_ratios_here(n: int, values: list[float]) -> list[float]:
    """BlockMerge_Gradient's spreading, written out again for the test."""
    if len(values) == 1:
        values = values * 2
    per = n // (len(values) - 1)
    out: list[float] = []
    for i in range(len(values) - 1):
        out += list(np.linspace(values[i], values[i + 1], per))
    return out + [values[-1]] * (n - len(out))


@pytest.mark.parametrize(
    ("options", "select"),
    [
        ({}, lambda n: True),
        ({"layer_only": True}, lambda n: "layer" in n),
        ({"no_layers": True}, lambda n: "layer" not in n),
        ({"filter": "mlp"}, lambda n: "mlp" in n),
        ({"layer_only": True, "filter": "self_attn"}, lambda n: "self_attn" in n),
    ],
)
def test_tensor_gradient_as_blockmerge_in_module_order(
    models: dict[str, Any], tmp_path: Path, options: dict[str, Any], select: Any
) -> None:
    root = models["root"]
    values = [0.9, 0.5, 0.0, 0.3]
    step = {"method": "gradient", "mode": "tensor", "model": str(root / "b"), "values": values} | options
    recipe = parse_recipe({"base": str(root / "a"), "steps": [step]}, tmp_path)
    keys = [n for n in module_order(models["a"]) if select(n)]
    ratios = dict(zip(keys, blockmerge_ratios_here(len(keys), values), strict=True))
    model = plan_merge(recipe)
    assert model.steps[0].params == pytest.approx({n: ratios.get(n) for n in models["a"]}, abs=1e-12)
    if options:
        return  # the arithmetic is the same for every selection
    # 30 tensors in 3 sections of 10: section ends repeat, the 30th... and the file order plays no part
    assert len(keys) == 30 and ratios["model.layers.0.self_attn.v_proj.weight"] == pytest.approx(0.9 - 3 * 0.4 / 9)
    got = read_out(merge(recipe, tmp_path / "out").path)
    assert_close(got, {n: (1 - ratios[n]) * models["a"][n] + ratios[n] * models["b"][n] for n in models["a"]})


def test_slerp_of_whole_tensors_and_the_lerp_fallback(models: dict[str, Any], tmp_path: Path) -> None:
    root = models["root"]
    # a model whose attention is b's but whose MLPs and norms are a's ×3: parallel to a's, so lerped
    mixed = {n: (3 * models["a"][n] if ("mlp" in n or "norm" in n) else models["b"][n]) for n in models["a"]}
    folder = tmp_path / "mixed"
    make_llama(folder, seed=0)  # the layout, then the tensors replaced
    for f in folder.glob("*.safetensors"):
        f.unlink()
    (folder / "model.safetensors.index.json").unlink()
    with ShardedWriter(folder, [TensorPlan(n, "F32", v.shape) for n, v in mixed.items()]) as w:
        for n, v in mixed.items():
            w.write(n, v.astype(np.float32))
        w.close()
    t_values = [0.2, 0.8]
    recipe = parse_recipe(
        {"base": str(root / "a"), "steps": [{"method": "slerp", "model": str(folder), "t": t_values}]}, tmp_path
    )
    result = merge(recipe, tmp_path / "out")
    got = read_out(result.path)
    want = {}
    for n, a in models["a"].items():
        b = mixed[n].astype(np.float32).astype(np.float64)
        t = gradient_value(t_values, mergekit_t(n, 3))
        cos = float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))
        if abs(cos) > 0.9995:
            want[n] = (1 - t) * a + t * b
            continue
        theta = math.acos(cos)
        want[n] = (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)
    assert_close(got, want)
    n_parallel = sum(1 for n in mixed if "mlp" in n or "norm" in n)
    assert any(f"{n_parallel} nearly parallel tensors interpolated linearly" in note for note in result.notes)
    # per row, the angle is another one: the whole-tensor result is what mergekit gives
    a, b = models["a"]["model.layers.0.self_attn.q_proj.weight"], mixed["model.layers.0.self_attn.q_proj.weight"]
    t = gradient_value(t_values, 0.0)
    rows = []
    for ra, rb in zip(a, b, strict=True):
        th = math.acos(float(ra @ rb / (np.linalg.norm(ra) * np.linalg.norm(rb))))
        rows.append((math.sin((1 - t) * th) * ra + math.sin(t * th) * rb) / math.sin(th))
    assert not np.allclose(np.array(rows), got["model.layers.0.self_attn.q_proj.weight"], atol=1e-3)


# -- vocabularies -----------------------------------------------------------------------------


def test_vocabulary_mismatches_as_each_reference_handles_them(models: dict[str, Any], tmp_path: Path) -> None:
    root = models["root"]
    big = make_llama(tmp_path / "big", seed=4, vocab=44)
    # mergekit's rule (linear, layer gradients, SLERP): the common rows, and config.json says so
    recipe = parse_recipe(
        {"base": str(tmp_path / "big"), "steps": [{"method": "gradient", "model": str(root / "a"), "values": 0.5}]},
        tmp_path,
    )
    result = merge(recipe, tmp_path / "common")
    got = read_out(result.path)
    assert got["model.embed_tokens.weight"].shape == (40, 16) and got["lm_head.weight"].shape == (40, 16)
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        np.testing.assert_allclose(got[n], 0.5 * big[n][:40] + 0.5 * models["a"][n], rtol=TOL, atol=TOL)
    assert json.loads((result.path / "config.json").read_text())["vocab_size"] == 40
    assert any(
        "44, 40 rows; the common 40 are merged (as mergekit --unsafe-truncate-embeddings does)" in n
        for n in result.notes
    )

    # BlockMerge_Gradient's: the size of model 1, its extra rows kept; model 2's extra rows dropped
    for base, other, rows in (("big", root / "a", 44), ("a", tmp_path / "big", 40)):
        base_path = tmp_path / "big" if base == "big" else root / "a"
        recipe = parse_recipe(
            {
                "base": str(base_path),
                "steps": [{"method": "gradient", "mode": "tensor", "model": str(other), "values": [0.4]}],
            },
            tmp_path,
        )
        result = merge(recipe, tmp_path / f"bm-{base}")
        got = read_out(result.path)
        first = big if base == "big" else models["a"]
        second = models["a"] if base == "big" else big
        for n in ("model.embed_tokens.weight", "lm_head.weight"):
            assert got[n].shape == (rows, 16)
            np.testing.assert_allclose(got[n][:40], 0.6 * first[n][:40] + 0.4 * second[n][:40], rtol=TOL, atol=TOL)
            np.testing.assert_array_equal(got[n][40:], first[n][40:])
        assert any("as BlockMerge_Gradient does" in n for n in result.notes)
        assert json.loads((result.path / "config.json").read_text())["vocab_size"] == rows


def test_tied_embeddings_in_a_blockmerge(tmp_path: Path) -> None:
    make_llama(tmp_path / "t1", seed=1, tied=True)
    make_llama(tmp_path / "t2", seed=2, tied=True)
    step = {"method": "gradient", "mode": "tensor", "model": str(tmp_path / "t2"), "values": [1.0, 0.0]}
    model = plan_merge(parse_recipe({"base": str(tmp_path / "t1"), "steps": [step]}, tmp_path))
    # the state dict has 30 keys (lm_head.weight too); the shared matrix takes the last one's ratio
    keys = module_order([*model.names(), "lm_head.weight"])
    ratios = blockmerge_ratios_here(len(keys), [1.0, 0.0])
    assert "lm_head.weight" not in model.names() and len(keys) == 30
    assert model.steps[0].params["model.embed_tokens.weight"] == pytest.approx(ratios[-1])
    assert model.steps[0].params["model.layers.0.self_attn.q_proj.weight"] == pytest.approx(ratios[1])


# -- the chronolima-airo-grad shape, output, CLI ------------------------------------------------------


def test_the_chronolima_airo_grad_recipe_shape(tmp_path: Path) -> None:
    small = {"hidden": 8, "heads": 2, "kv_heads": 2, "inter": 8, "vocab": 16, "layers": 40, "max_shard": 40_000}
    chronos = make_llama(tmp_path / "chronos", seed=1, **small)
    airo = make_llama(tmp_path / "airoboros", seed=2, **small)
    lima = make_adapter(tmp_path / "limarp", chronos, seed=3, r=2, alpha=4, targets=("q_proj", "v_proj"))
    recipe = write_recipe(
        tmp_path / "chronolima-airo-grad.toml",
        """
base = "chronos"
[[steps]]
method = "lora"
adapter = "limarp"
weight = 0.25
[[steps]]
method = "gradient"
mode = "layer"
model = "airoboros"
values = [0.9, 0.0, 0.0]
layers = [0, 25, 39]
""",
    )
    model = plan_merge(load_recipe(recipe))
    blend = model.steps[1].params
    for i in range(40):
        v = 0.9 * (1 - i / 25) if i < 25 else 0.0
        assert blend[f"model.layers.{i}.mlp.up_proj.weight"] == pytest.approx(v, abs=1e-12)
    got = read_out(merge(load_recipe(recipe), tmp_path / "out").path)
    q = "model.layers.5.self_attn.q_proj.weight"
    key = "base_model.model.model.layers.5.self_attn.q_proj"
    lora = chronos[q] + 0.25 * 2 * (lima[key + ".lora_B.weight"] @ lima[key + ".lora_A.weight"])
    v = 0.9 * (1 - 5 / 25)
    np.testing.assert_allclose(got[q], (1 - v) * lora + v * airo[q], rtol=TOL, atol=TOL)
    np.testing.assert_allclose(got["model.layers.30.mlp.up_proj.weight"], chronos["model.layers.30.mlp.up_proj.weight"])


def test_the_output_folder_is_a_complete_checkpoint(models: dict[str, Any], tmp_path: Path) -> None:
    root = models["root"]
    make_llama(tmp_path / "old", seed=7, extra={"model.layers.0.self_attn.rotary_emb.inv_freq": (2,)})
    recipe = write_recipe(
        tmp_path / "r.toml",
        f"""
base = "old"
dtype = "bf16"
shard_size = "4KB"
[[steps]]
method = "gradient"
model = "{root / "a"}"
values = 0.25
""",
    )
    result = merge(load_recipe(recipe), tmp_path / "out")
    out = result.path
    files = sorted(p.name for p in out.iterdir())
    assert "config.json" in files and "tokenizer.json" in files and "tokenizer_config.json" in files
    assert "merge_recipe.toml" in files and "model.safetensors.index.json" in files
    assert len([f for f in files if f.endswith(".safetensors")]) > 2
    assert (out / "tokenizer.json").read_text() == (tmp_path / "old" / "tokenizer.json").read_text()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert list(index["weight_map"]) == module_order(models["a"])  # written in module order
    assert any("1 rotary_emb.inv_freq buffers left out" in n for n in result.notes)
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["num_hidden_layers"] == 3
    old = read_out(tmp_path / "old")
    ck = Checkpoint.open(out)
    for n in models["a"]:
        assert ck.tensors[n].dtype == "BF16"
        want = to_dtype((0.75 * old[n] + 0.25 * models["a"][n]).astype(np.float32), "BF16")
        assert np.abs(ck.raw(n).astype(np.int64) - want.astype(np.int64)).max() <= 1  # one bf16 step at most
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(CatteryError, match="already exists"):
        merge(load_recipe(recipe), out)
    with pytest.raises(CatteryError, match="would replace the input"):
        merge(load_recipe(recipe), tmp_path / "old", force=True)
    again = merge(load_recipe(recipe), out, force=True)  # replaced whole: no shard of the old one stays
    assert sorted(p.name for p in again.path.iterdir()) == files


def test_an_interrupted_merge_leaves_nothing_under_the_final_name(models: dict[str, Any], tmp_path: Path) -> None:
    root = models["root"]
    recipe = parse_recipe(
        {"base": str(root / "a"), "steps": [{"method": "gradient", "model": str(root / "b"), "values": 0.5}]},
        tmp_path,
    )

    def stop(done: int, total: int, what: str, nbytes: int, total_bytes: int) -> None:
        if done == 5:
            assert 0 < nbytes < total_bytes
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        merge(recipe, tmp_path / "out", progress=stop)
    assert list(tmp_path.iterdir()) == []


def train_sentencepiece(vocab: int) -> bytes:
    import io
    import random

    import sentencepiece as spm

    rnd = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "park", "while", "birds", "sang"]
    lines = [" ".join(rnd.choice(words) for _ in range(12)) for _ in range(400)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab,
        model_type="bpe",
        character_coverage=1.0,
        minloglevel=2,
    )
    return model.getvalue()


@pytest.fixture(scope="module")
def sp_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small llama models llama.cpp can run, the base with a SentencePiece tokenizer trained here."""
    root = tmp_path_factory.mktemp("sp")
    size = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "inter": 128, "vocab": 64, "std": 0.1}
    make_llama(root / "a", seed=21, tokenizer=False, max_shard=60_000, **size)
    make_llama(root / "b", seed=22, tokenizer=False, **size)
    (root / "a" / "tokenizer.model").write_bytes(train_sentencepiece(64))
    (root / "a" / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return root


def test_a_merge_straight_into_gguf_is_the_merged_folder_converted(sp_models: Path, tmp_path: Path) -> None:
    import gguf

    from app.engine.engine import Engine
    from app.engine.gguf_header import read_header
    from app.engine.options import LoadOptions, SamplerSettings
    from converters.hf_to_gguf import convert

    recipe = write_recipe(
        tmp_path / "r.toml",
        f"""
name = "tiny-merge"
base = "{sp_models / "a"}"
[gguf]
outtype = "f32"
[[steps]]
method = "slerp"
model = "{sp_models / "b"}"
t = [0.2, 0.6]
""",
    )
    direct = merge(load_recipe(recipe), tmp_path / "direct.gguf")
    assert direct.path.is_file() and "wrote" in direct.summary()
    folder = merge(load_recipe(recipe), tmp_path / "tiny-merge").path
    convert(folder, tmp_path / "via-folder.gguf", outtype="f32")
    # the folder named as the recipe names the merge: the very same file, metadata included
    assert direct.path.read_bytes() == (tmp_path / "via-folder.gguf").read_bytes()
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nname: tiny-merge\n") and "- a\n- b\n" in card and 'method = "slerp"' in card
    assert "_name_or_path" not in json.loads((folder / "config.json").read_text())
    one, two = gguf.GGUFReader(direct.path), gguf.GGUFReader(tmp_path / "via-folder.gguf")
    theirs = {t.name: t for t in two.tensors}
    assert len(one.tensors) == len(theirs) == 2 * 9 + 3
    for t in one.tensors:  # the same bytes, compared by name
        assert t.tensor_type == theirs[t.name].tensor_type
        assert t.data.tobytes() == theirs[t.name].data.tobytes(), t.name
    with direct.path.open("rb") as f:
        header = read_header(f)
    assert header.get("general.name") == "tiny-merge"
    assert header.get("general.base_model.count") == 2 and header.get("general.tags") == ["merge", "cattery"]
    texts = []
    for path in (direct.path, tmp_path / "via-folder.gguf", None):
        if path is None:  # the base alone, converted: the merge must differ from it
            convert(sp_models / "a", tmp_path / "a.gguf", outtype="f32")
            path = tmp_path / "a.gguf"
        eng = Engine()
        try:
            eng.load(path, LoadOptions(ctx=256, threads=2))
            settings = SamplerSettings(temperature=0.0, repeat_penalty=1.0, max_tokens=16)
            texts.append(eng.generate(eng.tokenize("the cat sat on"), settings).result())
        finally:
            eng.close()
    assert texts[0] == texts[1] and texts[0]
    assert texts[0] != texts[2]

    def stop(done: int, total: int, what: str, *_bytes: int) -> None:
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        merge(load_recipe(recipe), tmp_path / "stopped.gguf", progress=stop)
    assert not (tmp_path / "stopped.gguf").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_recipes_with_mistakes_are_one_clear_line(models: dict[str, Any], tmp_path: Path) -> None:
    a = str(models["root"] / "a")
    cases = [
        ({"steps": []}, "no base model"),
        ({"base": a}, "no steps"),
        ({"base": a, "steps": [{"method": "ties"}]}, "method 'ties' is not one of lora, linear, gradient, slerp"),
        ({"base": str(tmp_path / "nope"), "steps": []}, "no such folder"),
        ({"base": a, "steps": [{"method": "linear", "models": [a], "weights": [1]}]}, "weights needs 2 entries"),
        ({"base": a, "steps": [{"method": "slerp", "model": a, "t": 0.5, "tt": 1}]}, "unknown key 'tt'"),
        ({"base": a, "dtype": "q4", "steps": []}, "'q4' is not one of f32, f16, bf16"),
        (
            {"base": a, "steps": [{"method": "gradient", "mode": "tensor", "model": a, "values": [{"value": 1}]}]},
            "expected a number",
        ),
        (
            {"base": a, "steps": [{"method": "gradient", "model": a, "values": [0, 1], "layers": [0]}]},
            "one layer per value",
        ),
    ]
    for data, message in cases:
        with pytest.raises(RecipeError, match=message):
            parse_recipe(data, tmp_path, source="r.toml")
    filtered = {"method": "gradient", "model": a, "values": [{"filter": "mlp", "value": 1.0}]}
    with pytest.raises(RecipeError, match=r"no value for model\.embed_tokens\.weight"):
        plan_merge(parse_recipe({"base": a, "steps": [filtered]}, tmp_path))
    (tmp_path / "bare").mkdir()
    make_llama(tmp_path / "bare", seed=1, tokenizer=False)
    with pytest.raises(RecipeError, match="no tokenizer files"):
        plan_merge(parse_recipe({"base": str(tmp_path / "bare"), "steps": [filtered | {"values": 1.0}]}, tmp_path))


def test_cattery_merge_on_the_command_line(models: dict[str, Any], tmp_path: Path) -> None:
    root = models["root"]
    recipe = write_recipe(
        tmp_path / "r.toml",
        f"""
base = "{root / "a"}"
[[steps]]
method = "gradient"
mode = "tensor"
model = "{root / "b"}"
values = [0.9, 0.0]
""",
    )
    plan = run_cattery("merge", str(recipe), "--dry-run")  # a plan needs no output
    assert plan.returncode == 0, plan.stderr
    nowhere = run_cattery("merge", str(recipe))
    assert nowhere.returncode != 0 and "-o OUT_DIR or -o OUT.gguf" in nowhere.stderr
    assert nowhere.stderr.strip().count("\n") == 0
    assert "model.layers.0.self_attn.q_proj.weight" in plan.stdout and "0.869" in plan.stdout
    assert not (tmp_path / "out").exists()
    done = run_cattery("merge", str(recipe), "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'out'}" in done.stdout
    assert Checkpoint.open(tmp_path / "out").names()
    again = run_cattery("merge", str(recipe), "-o", str(tmp_path / "out"))
    assert again.returncode != 0 and again.stderr.strip().count("\n") == 0
    assert again.stderr.startswith("cattery: error: ") and "already exists" in again.stderr
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text("{}")
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    write_recipe(tmp_path / "bad.toml", 'base = "pickled"\n[[steps]]\nmethod = "slerp"\nmodel = "pickled"\nt = 0.5\n')
    bad = run_cattery("merge", str(tmp_path / "bad.toml"), "-o", str(tmp_path / "o2"))
    assert bad.returncode != 0 and "never unpickles" in bad.stderr and "safetensors" in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr
