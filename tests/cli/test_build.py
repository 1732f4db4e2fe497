"""`cattery build`: sources (local and from the loopback hub) → a LoRA and a gradient merge
straight into GGUF → quantized files in the model library, chatted with in the recipe's format."""

from __future__ import annotations

import json
import re
import resource
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cattery
from tests.hf_fixtures import random_llama
from tests.hub_server import HubServer

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def lora_adapter(folder: Path, base: Path, seed: int = 3, r: int = 4) -> Path:
    """A PEFT LoRA for q_proj and v_proj of every layer of `base`."""
    from safetensors.numpy import save_file

    from converters.checkpoint import Checkpoint

    rng = np.random.default_rng(seed)
    tensors = {}
    with Checkpoint.open(base) as ck:
        for name in ck.names():
            if name.endswith(("q_proj.weight", "v_proj.weight")):
                rows, cols = ck.tensors[name].shape
                module = name.removesuffix(".weight")
                tensors[f"base_model.model.{module}.lora_A.weight"] = rng.standard_normal((r, cols)).astype(np.float32)
                tensors[f"base_model.model.{module}.lora_B.weight"] = rng.standard_normal((rows, r)).astype(np.float32)
    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


RECIPE = """
name = "tiny-grad"

[sources]
base = "{base}"
lora = "{lora}"
other = "{other}"

[merge]
base = "base"
[[merge.steps]]
method = "lora"
adapter = "lora"
weight = 0.25
[[merge.steps]]
method = "gradient"
mode = "tensor"
model = "other"
values = [0.9, 0.0]

[gguf]
outtype = "f16"
keep = true

[quantize]
types = ["Q8_0"]

[chat]
format = "alpaca"
"""


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("build-sources")
    base = random_llama(root / "base", seed=1, n_layer=3)
    other = random_llama(root / "other", seed=2, n_layer=3)
    return {"base": base, "other": other, "lora": lora_adapter(root / "lora", base)}


def test_a_recipe_builds_quantized_models_into_the_library(sources, cattery_home: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(RECIPE.format(**{k: str(v) for k, v in sources.items()}))
    r = run_cattery("build", str(recipe), home=cattery_home)
    assert r.returncode == 0, r.stderr
    folder = cattery_home / "data" / "models" / "tiny-grad"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["tiny-grad.F16.gguf", "tiny-grad.Q8_0.gguf"]  # nothing else left behind
    assert "merging into GGUF" in r.stderr and "quantizing to Q8_0" in r.stderr
    assert re.search(r"merging into GGUF: \d+/\d+ tensors · .+ of .+ · 100%", r.stderr)  # tensors and bytes
    assert "chat with it: cattery --model tiny-grad.Q8_0" in r.stderr  # the quantized file, not the kept F16
    listing = json.loads(run_cattery("models", "list", "--json", home=cattery_home).stdout)
    assert {"tiny-grad.Q8_0", "tiny-grad.F16"} <= {e["name"] for e in listing}
    info = json.loads(run_cattery("models", "info", "tiny-grad.Q8_0", "--json", home=cattery_home).stdout)
    assert info["file_type"] == "Q8_0" and info["block_count"] == 3
    settings = tomllib.loads((cattery_home / "config" / "settings.toml").read_text())
    assert settings["model_settings"]["tiny-grad.Q8_0.gguf"]["format"] == "alpaca"
    chat = run_cattery(
        "chat", "--plain", "--model", "tiny-grad.Q8_0", "-n", "4", "--card", "none", input="hello\n", home=cattery_home
    )
    assert chat.returncode == 0, chat.stderr
    assert "format alpaca" in chat.stderr  # the recorded format, not a guess
    again = run_cattery("build", str(recipe), home=cattery_home)
    assert again.returncode != 0 and "--force" in again.stderr


def test_sources_from_the_hub_are_downloaded_first(sources, cattery_home: Path, tmp_path: Path) -> None:
    hub = HubServer()
    repo = hub.repo("cattery-test/tiny-base")
    for p in sorted(sources["base"].iterdir()):
        repo.add(p.name, p)
    hub.start()
    try:
        recipe = tmp_path / "hub.toml"
        recipe.write_text('name = "from-hub"\n[sources]\nbase = "cattery-test/tiny-base"\n[gguf]\nouttype = "q8_0"\n')
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_XET": "1"}
        r = run_cattery("build", str(recipe), home=cattery_home, env=env)
        assert r.returncode == 0, r.stderr
        assert "downloading cattery-test/tiny-base" in r.stderr
        assert (cattery_home / "data" / "models" / "from-hub" / "from-hub.Q8_0.gguf").is_file()
        assert hub.count("GET", "/resolve/") >= 1
    finally:
        hub.stop()


def test_bad_recipes_and_short_disks_are_refused_before_any_work(sources, cattery_home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(RECIPE.format(**{k: str(v) for k, v in sources.items()}).replace('"Q8_0"', '"Q9_Z"'))
    r = run_cattery("build", str(bad), home=cattery_home)
    assert r.returncode != 0 and "Q9_Z" in r.stderr and r.stderr.count("\n") == 1
    missing = tmp_path / "missing.toml"
    missing.write_text('name = "x"\n[sources]\nbase = "./nowhere"\n')
    r = run_cattery("build", str(missing), home=cattery_home)
    assert r.returncode != 0 and "nowhere" in r.stderr

    def tiny_quota() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    good = tmp_path / "good.toml"
    good.write_text(RECIPE.format(**{k: str(v) for k, v in sources.items()}))
    r = run_cattery("build", str(good), home=cattery_home, preexec_fn=tiny_quota)
    assert r.returncode != 0 and "free" in r.stderr
    assert not (cattery_home / "data" / "models" / "tiny-grad").exists()
