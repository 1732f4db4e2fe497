"""Merges against mergekit 0.1.5's semantics and PEFT's, on tiny models with hand-worked expectations.

mergekit and PEFT are not needed here: each expectation is what their source says, written
out for a few small tensors (bench/mergekit_compare.py runs the real libraries beside Cattery).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converters.merge import merge, plan_merge
from converters.merge_order import gradient_t
from converters.merge_recipe import parse_recipe
from tests.test_merge import make_llama, read_out

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
