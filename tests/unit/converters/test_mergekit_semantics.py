"""Merges against mergekit 0.1.5's semantics and PEFT's, on tiny models with hand-worked expectations.

mergekit and PEFT are not needed here: each expectation is what their source says, written
out for a few small tensors (bench/mergekit_compare.py runs the real libraries beside Cattery).
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converters.checkpoint import Checkpoint, ShardedWriter, TensorPlan
from converters.merge import merge, plan_merge
from converters.merge_methods import fma_, torch_sum_f32
from converters.merge_order import gradient_t
from converters.merge_recipe import parse_recipe
from tests.llama_checkpoints import make_llama, read_out

ENDS = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tiny")
    shape = {"layers": 3, "hidden": 8, "heads": 2, "kv_heads": 1, "inter": 8, "vocab": 12}
    return {
        "root": root,
        "a": make_llama(root / "a", seed=21, **shape),
        "b": make_llama(root / "b", seed=22, **shape),
        "one": make_llama(root / "one", seed=23, **(shape | {"layers": 1})),
        "one_b": make_llama(root / "one_b", seed=24, **(shape | {"layers": 1})),
    }


# -- where a gradient is read at the ends of the model ---------------------------------------


def test_both_ends_of_the_model_read_a_gradient_at_its_first_value() -> None:
    # mergekit 0.1.5, plan.py: plan_module plans the pre-weights and the post-weights with one
    # ConfigReader made at t = 0; only the layers get t = i / (n - 1)
    for name in ENDS:
        assert gradient_t(name, 3) == 0.0
        assert gradient_t(name, 1) == 0.0
    assert gradient_t("model.layers.0.mlp.up_proj.weight", 3) == 0.0
    assert gradient_t("model.layers.2.mlp.up_proj.weight", 3) == 1.0
    assert gradient_t("model.layers.0.mlp.up_proj.weight", 1) == 1.0  # a one-layer slice sits at t = 1


@pytest.mark.parametrize(
    ("method", "key"),
    [("gradient", "values"), ("slerp", "t")],
)
def test_a_gradient_over_the_layers_gives_the_final_norm_and_lm_head_its_first_value(
    tiny: dict[str, Any], tmp_path: Path, method: str, key: str
) -> None:
    root = tiny["root"]
    values = [0.9, 0.2, 0.0]
    step = {"method": method, "model": str(root / "b"), key: values}
    model = plan_merge(parse_recipe({"base": str(root / "a"), "steps": [step]}, tmp_path))
    params = model.steps[0].params
    for name in ENDS:
        assert params[name] == 0.9, name
    assert params["model.layers.0.self_attn.q_proj.weight"] == 0.9
    assert params["model.layers.1.self_attn.q_proj.weight"] == pytest.approx(0.2)
    assert params["model.layers.2.self_attn.q_proj.weight"] == 0.0
    if method == "gradient":
        got = read_out(merge(parse_recipe({"base": str(root / "a"), "steps": [step]}, tmp_path), tmp_path / "o").path)
        for name in ENDS:
            a, b = tiny["a"][name], tiny["b"][name]
            np.testing.assert_allclose(got[name], 0.1 * a + 0.9 * b, rtol=1e-6, atol=1e-6, err_msg=name)


def test_filtered_and_layer_pinned_gradients_at_the_ends(tiny: dict[str, Any], tmp_path: Path) -> None:
    root = tiny["root"]
    t = [{"filter": "self_attn", "value": [0.0, 1.0]}, {"filter": "norm", "value": [0.3, 0.6]}, {"value": [0.8, 0.1]}]
    model = plan_merge(
        parse_recipe(
            {"base": str(root / "a"), "steps": [{"method": "slerp", "model": str(root / "b"), "t": t}]}, tmp_path
        )
    )
    params = model.steps[0].params
    assert params["model.norm.weight"] == 0.3  # the "norm" filter's first value, not its last
    assert params["lm_head.weight"] == 0.8 and params["model.embed_tokens.weight"] == 0.8
    assert params["model.layers.2.input_layernorm.weight"] == pytest.approx(0.6)
    # Cattery's {values, layers} form reads the same t: the ends take the value at layer 0
    pinned = {"values": [0.5, 0.25, 0.0], "layers": [0, 1, 2]}
    step = {"method": "linear", "models": [str(root / "b")], "weights": [1.0, pinned]}
    model = plan_merge(parse_recipe({"base": str(root / "a"), "steps": [step]}, tmp_path))
    for name in ENDS:
        assert model.steps[0].params[name] == [1.0, 0.5], name
    assert model.steps[0].params["model.layers.2.mlp.down_proj.weight"] == [1.0, 0.0]


def test_a_one_layer_model_puts_its_layer_at_the_last_value_and_its_ends_at_the_first(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    root = tiny["root"]
    step = {"method": "gradient", "model": str(root / "one_b"), "values": [0.25, 0.75]}
    params = plan_merge(parse_recipe({"base": str(root / "one"), "steps": [step]}, tmp_path)).steps[0].params
    assert params["model.layers.0.mlp.up_proj.weight"] == 0.75
    assert all(params[name] == 0.25 for name in ENDS)


# -- rounding as the references round ------------------------------------------------------------


def llama_filled(folder: Path, fill: Any, *, layers: int = 2) -> dict[str, np.ndarray]:
    """A tiny llama whose every tensor is `fill(name, shape)` (float32), written as make_llama writes one."""
    make_llama(folder, seed=0, layers=layers, hidden=8, heads=2, kv_heads=1, inter=8, vocab=12)
    ck = Checkpoint.open(folder)
    tensors = {n: np.asarray(fill(n, ck.tensors[n].shape), dtype=np.float32) for n in ck.names()}
    ck.close()
    for f in folder.glob("*.safetensors"):
        f.unlink()
    (folder / "model.safetensors.index.json").unlink(missing_ok=True)
    with ShardedWriter(folder, [TensorPlan(n, "F32", v.shape) for n, v in tensors.items()]) as w:
        for n, v in tensors.items():
            w.write(n, v)
        w.close()
    return tensors


def constant(value: float) -> Any:
    return lambda name, shape: np.full(shape, value, dtype=np.float32)


def merged(tmp_path: Path, base: Path, steps: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    recipe = parse_recipe({"base": str(base), "steps": steps}, tmp_path)
    out = merge(recipe, tmp_path / "out").path
    ck = Checkpoint.open(out)
    result = {n: np.array(ck.f32(n), dtype=np.float32) for n in ck.names()}
    ck.close()
    return result


def test_linear_adds_each_model_with_one_rounding_as_mergekit(tmp_path: Path) -> None:
    # mergekit 0.1.5 sums with addcmul_, a fused multiply-add on PyTorch's CPU kernels:
    # -1 + (1 + 2⁻¹²)·(1 + 2⁻¹²) is exactly 2⁻¹¹ + 2⁻²⁴, which float32 holds; rounding the
    # product first (to 1 + 2⁻¹¹, a tie to even) would give 2⁻¹¹
    llama_filled(tmp_path / "m", constant(-1.0))
    llama_filled(tmp_path / "n", constant(1 + 2**-12))
    step = {"method": "linear", "models": [str(tmp_path / "n")], "weights": [1.0, 1 + 2**-12], "normalize": False}
    got = merged(tmp_path, tmp_path / "m", [step])
    for name, x in got.items():
        assert np.all(x == np.float32(2**-11 + 2**-24)), name


def test_linear_normalises_by_the_float32_sum_of_the_weights(tmp_path: Path) -> None:
    # in float32, 0.1 + 0.2 + 0.4 is 0.70000005, not float32(0.7): three copies of a model
    # merged with these weights give the model back exactly only when divided by that sum
    rng = np.random.default_rng(5)

    def powers_of_two(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.ldexp(rng.choice([-1.0, 1.0], shape), rng.integers(-6, 6, shape))

    model = llama_filled(tmp_path / "a1", powers_of_two)
    for copy in ("a2", "a3"):
        llama_filled(tmp_path / copy, lambda name, shape: model[name])
    step = {"method": "linear", "models": [str(tmp_path / "a2"), str(tmp_path / "a3")], "weights": [0.1, 0.2, 0.4]}
    got = merged(tmp_path, tmp_path / "a1", [step])
    for name, x in model.items():
        np.testing.assert_array_equal(got[name], x, err_msg=name)


def test_a_layer_gradient_rounds_as_a_linear_merge_of_one_minus_v_and_v(tmp_path: Path) -> None:
    # 0.25·(-3) + 0.75·(1 + 2⁻²³) is exactly 3·2⁻²⁵: one rounding keeps it; rounding the
    # product 0.75·(1 + 2⁻²³) first (a tie, to 0.75 + 2⁻²³) would give 2⁻²³
    llama_filled(tmp_path / "m", constant(-3.0))
    llama_filled(tmp_path / "n", constant(1 + 2**-23))
    got = merged(tmp_path, tmp_path / "m", [{"method": "gradient", "model": str(tmp_path / "n"), "values": 0.75}])
    for name, x in got.items():
        assert np.all(x == np.float32(3 * 2**-25)), name


def test_slerp_of_parallel_tensors_lerps_with_mergekits_float32_one_minus_t(tmp_path: Path) -> None:
    # parallel tensors fall back to (1 - t)·a + t·b with 1 - t taken in float32: for t = 0.09
    # that is 0.90999997, where float32(1 - 0.09) is 0.91
    rng = np.random.default_rng(6)
    a = llama_filled(tmp_path / "a", lambda name, shape: rng.standard_normal(shape))
    b = llama_filled(tmp_path / "b", lambda name, shape: 2 * a[name])
    got = merged(tmp_path, tmp_path / "a", [{"method": "slerp", "model": str(tmp_path / "b"), "t": 0.09}])
    t = np.float32(0.09)
    assert np.float32(1) - t != np.float32(1 - 0.09)
    for name in a:
        want = a[name] * (np.float32(1) - t) + b[name] * t  # two float32 products, then their float32 sum
        np.testing.assert_array_equal(got[name], want, err_msg=name)


# -- LoRA as PEFT merges it -------------------------------------------------------------------


def write_adapter(folder: Path, tensors: dict[str, np.ndarray], config: dict[str, Any]) -> None:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"} | config))
    save_file(
        {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
        str(folder / "adapter_model.safetensors"),
    )


def test_lora_scales_b_a_once_by_alpha_over_r_times_the_weight(tiny: dict[str, Any], tmp_path: Path) -> None:
    # PEFT: W + (B @ A) · scaling, with scaling = lora_alpha / r multiplied by the weight
    # (scale_layer): one float32 product. Rank 1 makes B @ A one exact-to-round product per element.
    rng = np.random.default_rng(7)
    base = {n: x.astype(np.float32) for n, x in tiny["a"].items()}
    q = "model.layers.1.self_attn.q_proj"
    rows, cols = base[q + ".weight"].shape
    lora_a, lora_b = (
        rng.standard_normal((1, cols)).astype(np.float32),
        rng.standard_normal((rows, 1)).astype(np.float32),
    )
    write_adapter(
        tmp_path / "lora",
        {f"base_model.model.{q}.lora_A.weight": lora_a, f"base_model.model.{q}.lora_B.weight": lora_b},
        {"r": 1, "lora_alpha": 1.5, "target_modules": ["q_proj"]},
    )
    weight = 0.3
    got = merged(
        tmp_path, tiny["root"] / "a", [{"method": "lora", "adapter": str(tmp_path / "lora"), "weight": weight}]
    )
    delta = (lora_b @ lora_a) * np.float32(1.5 / 1 * weight)
    np.testing.assert_array_equal(got[q + ".weight"], base[q + ".weight"] + delta)
    # scaling first, then the weight, rounds twice: it is not what PEFT gives
    twice = base[q + ".weight"] + (lora_b @ lora_a) * np.float32(1.5) * np.float32(weight)
    assert not np.array_equal(twice, got[q + ".weight"])
    assert all(np.array_equal(got[n], base[n]) for n in base if n != q + ".weight")


def test_embedding_layers_saved_by_peft_replace_the_bases_before_their_lora_is_added(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    # PEFT saves a targeted embed_tokens or lm_head whole (save_embedding_layers) as
    # `….base_layer.weight`, loads it over the base model's, then merges the LoRA into it
    rng = np.random.default_rng(8)
    base = {n: x.astype(np.float32) for n, x in tiny["a"].items()}
    vocab, hidden = base["model.embed_tokens.weight"].shape
    r = 2
    saved_embed = rng.standard_normal((vocab, hidden)).astype(np.float32)
    saved_head = rng.standard_normal((vocab, hidden)).astype(np.float32)
    emb_a, emb_b = rng.standard_normal((r, vocab)), rng.standard_normal((hidden, r))
    head_a, head_b = rng.standard_normal((r, hidden)), rng.standard_normal((vocab, r))
    p = "base_model.model."
    write_adapter(
        tmp_path / "lora",
        {
            p + "model.embed_tokens.base_layer.weight": saved_embed,
            p + "model.embed_tokens.lora_embedding_A": emb_a,
            p + "model.embed_tokens.lora_embedding_B": emb_b,
            p + "lm_head.base_layer.weight": saved_head,
            p + "lm_head.lora_A.weight": head_a,
            p + "lm_head.lora_B.weight": head_b,
        },
        {"r": r, "lora_alpha": 4, "target_modules": ["embed_tokens", "lm_head"]},
    )
    got = merged(tmp_path, tiny["root"] / "a", [{"method": "lora", "adapter": str(tmp_path / "lora"), "weight": 0.5}])
    want_embed = saved_embed + 0.5 * 2 * (emb_b @ emb_a).T
    want_head = saved_head + 0.5 * 2 * (head_b @ head_a)
    np.testing.assert_allclose(got["model.embed_tokens.weight"], want_embed, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["lm_head.weight"], want_head, rtol=1e-6, atol=1e-6)
    assert np.array_equal(got["model.norm.weight"], base["model.norm.weight"])


# -- the arithmetic underneath ------------------------------------------------------------------


def correctly_rounded(value: Fraction) -> np.float32:
    """The float32 nearest to an exact value (ties to even), worked out with exact fractions."""
    guess = np.float32(float(value))
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - value), int(np.array(c).view(np.int32)) & 1))


def test_fma_rounds_once_even_where_float64_would_round_twice() -> None:
    # 1 + x·w with x·w = 2⁻²⁴ + 262112·2⁻⁷¹: just above the midpoint between 1 and 1 + 2⁻²³, so
    # the fused result is 1 + 2⁻²³; float64 loses the 2⁻⁷¹ part and lands on the midpoint, whose
    # float32 rounding (to even) would be 1
    x, w = 8390624 * 2.0**-23, 16773185 * 2.0**-48
    assert np.float32(np.float64(1.0) + np.float64(x) * w) == np.float32(1.0)
    assert fma_(np.array([1.0], np.float32), np.array([x], np.float32), w)[0] == np.float32(1 + 2**-23)
    # and just below a midpoint whose even neighbour is the upper one
    acc, x, w = 1 + 2**-23, 8388609 * 2.0**-23, 16777214 * 2.0**-48
    assert fma_(np.array([acc], np.float32), np.array([x], np.float32), w)[0] == np.float32(1 + 2**-23)
    rng = np.random.default_rng(9)
    acc = (rng.standard_normal(5000) * 2.0 ** rng.integers(-30, 30, 5000)).astype(np.float32)
    xs = rng.standard_normal(5000).astype(np.float32)
    w = float(np.float32(rng.random()))
    got = fma_(acc.copy(), xs, w)
    want = [
        correctly_rounded(Fraction(float(a)) + Fraction(float(x)) * Fraction(w)) for a, x in zip(acc, xs, strict=True)
    ]
    np.testing.assert_array_equal(got, np.array(want, dtype=np.float32))


def test_the_weights_are_summed_in_pytorchs_order() -> None:
    big = 2.0**24  # where adding 1 rounds away (a tie, to even) but adding 2 does not
    # under 8 values: four accumulators over every fourth value, the leftovers into the first
    assert torch_sum_f32([1.0, big, 0.0, 0.0, 1.0]) == np.float32(big + 2)  # (1 + 1) + 2²⁴
    assert torch_sum_f32([1.0, 2.0, 3.0]) == np.float32(6.0)
    # 8 or more: whole 8-lane vectors summed lane by lane, the leftovers first, then each lane
    assert torch_sum_f32([1.0] * 8 + [big]) == np.float32(big)  # 2²⁴ + 1 + 1 … each 1 lost
    assert torch_sum_f32([0.5, 0.25] * 6) == np.float32(4.5)
