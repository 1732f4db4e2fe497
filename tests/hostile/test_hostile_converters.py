"""Checkpoints, tokenizers, adapters and recipes from strangers (issue 13, the converters' door).

Every hostile input goes through the real code path (`Checkpoint.open`, `convert`,
`load_vocab`, `LoraAdapter.open`, `load_recipe`, `merge`, `load_build`) in a forked
child under tests.hostile.bounds's bounds (5 s, 256 MB): it must be accepted or refused with
the project's own error in one line naming the file, and a refused conversion or merge
leaves nothing in its output folder. Hypothesis mutates a real safetensors file (its
length prefix and its JSON header), a real config.json and a real recipe. A few inputs
go through the real `cattery` command, as a user would run it; and a conversion killed
with SIGKILL leaves a partial file that the next run into the folder removes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from converters.checkpoint import Checkpoint
from converters.hf_to_gguf import convert
from tests.conftest import ROOT, run_cattery
from tests.hf_fixtures import random_llama
from tests.hostile.bounds import assert_bounded, assert_one_line_failure, assert_refused, run_bounded
from tests.hostile.cases_converters import (
    WORST_CASES,
    backtracking_pre_tokenizer,
    bpe_tokenizer_json,
    llama_config,
    nested_json,
    safetensors_bytes,
    tensor_header,
    tiny_llama,
)

MUTATIONS = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def sp_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small honest llama with a SentencePiece tokenizer: the starting point of the conversion cases."""
    return random_llama(tmp_path_factory.mktemp("honest") / "m", n_layer=1, hidden=32, ffn=32, n_head=2, n_kv_head=1)


def copy_of(folder: Path, tmp_path: Path, name: str = "m") -> Path:
    return Path(shutil.copytree(folder, tmp_path / name))


def edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- the worst cases (the ones that hung, recursed or ate memory) -----------------------------------


@pytest.mark.parametrize(("name", "case"), WORST_CASES, ids=[n for n, _ in WORST_CASES])
def test_worst_cases_are_bounded(name: str, case: Any) -> None:
    out = assert_bounded(case, what=name)
    if name != "safetensors header of 75k tiny entries":  # the one valid file among them
        assert out.kind == "refused", f"{name}: {out}"


# -- safetensors headers ---------------------------------------------------------------------------


def with_file(tmp_path: Path, data: bytes) -> Path:
    folder = tmp_path / "ck"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(llama_config()))
    (folder / "model.safetensors").write_bytes(data)
    return folder


def entry(dtype: Any = "F32", shape: Any = (4,), offsets: Any = (0, 16)) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape, "data_offsets": offsets}


DATA16 = b"\0" * 16
HEADER_CASES = [
    ("length past the file", safetensors_bytes(b"{}", length=1000), "only 2 follow"),
    ("length 2^64-1", safetensors_bytes(b"{}", length=2**64 - 1), "more than any checkpoint"),
    ("length 0", safetensors_bytes(b"", length=0), "a header of 0 bytes"),
    ("too short", b"\x02\0\0", "too short"),
    ("not JSON", safetensors_bytes(b"{not json}"), "not valid JSON"),
    ("not UTF-8", safetensors_bytes(b'{"\xff":1}'), "UTF-8"),
    ("a list", safetensors_bytes(b"[]"), "not an object"),
    ("nested 10k deep", safetensors_bytes(b'{"a":' + nested_json(10_000) + b"}"), "levels deep"),
    ("nested in an entry", safetensors_bytes({"w": entry(shape=[[[[4]]]])}, DATA16), "shape"),
    ("NaN", safetensors_bytes(b'{"w":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}}'), "not valid JSON"),
    ("entry a string", safetensors_bytes({"w": "F32"}), "not an object"),
    ("string offsets", safetensors_bytes({"w": entry(offsets=["0", "16"])}, DATA16), "data_offsets"),
    ("float offsets", safetensors_bytes({"w": entry(offsets=[0.0, 16.0])}, DATA16), "data_offsets"),
    ("one offset", safetensors_bytes({"w": entry(offsets=[0])}, DATA16), "data_offsets"),
    ("negative offset", safetensors_bytes({"w": entry(offsets=[-16, 0])}, DATA16), "not a span"),
    ("reversed offsets", safetensors_bytes({"w": entry(offsets=[16, 0])}, DATA16), "not a span"),
    (
        "overlapping",
        safetensors_bytes({"a": entry(offsets=[0, 16]), "b": entry(offsets=[8, 24])}, DATA16 * 2),
        "overlaps",
    ),
    ("a gap", safetensors_bytes({"a": entry(offsets=[16, 32])}, DATA16 * 2), "gap"),
    ("past the end", safetensors_bytes({"a": entry(shape=(8,), offsets=[0, 32])}, DATA16), "truncated"),
    ("trailing bytes", safetensors_bytes({"a": entry()}, DATA16 * 2), "belong to none"),
    ("shape of strings", safetensors_bytes({"w": entry(shape=["4"])}, DATA16), "shape"),
    ("negative shape", safetensors_bytes({"w": entry(shape=(-4,))}, DATA16), "shape"),
    ("bool shape", safetensors_bytes({"w": entry(shape=[True, 4])}, DATA16), "shape"),
    ("9 dimensions", safetensors_bytes({"w": entry(shape=(1,) * 8 + (4,))}, DATA16), "shape"),
    ("a dimension of 2^70", safetensors_bytes({"w": entry(shape=(0, 2**70), offsets=[0, 0])}), "shape"),
    ("shape disagrees with bytes", safetensors_bytes({"w": entry(shape=(3,))}, DATA16), "span is 16"),
    ("unknown dtype", safetensors_bytes({"w": entry(dtype="F8_E4M3")}, DATA16), "unsupported type"),
    ("dtype a number", safetensors_bytes({"w": entry(dtype=4)}, DATA16), "dtype"),
    ("metadata not strings", safetensors_bytes({"__metadata__": {"a": 1}, "w": entry()}, DATA16), "__metadata__"),
    ("control characters", safetensors_bytes({"w\x1b[2J": entry()}, DATA16), "control characters"),
    ("a name of 100 KB", safetensors_bytes({"w" * 100_000: entry()}, DATA16), "longer than"),
]


@pytest.mark.parametrize(("what", "data", "match"), HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
def test_safetensors_headers_are_checked_as_the_format_requires(
    what: str, data: bytes, match: str, tmp_path: Path
) -> None:
    folder = with_file(tmp_path, data)
    out = assert_refused(Checkpoint.open, folder, match=match, what=what)
    assert "model.safetensors" in out.detail


def test_a_sound_header_is_read_and_its_spans_lie_in_the_data(tmp_path: Path) -> None:
    header, size = tensor_header({"a": (2, 2), "b": (3,), "c": (0, 7)})
    folder = with_file(tmp_path, safetensors_bytes({"__metadata__": {"format": "pt"}, **header}, b"\0" * size))
    ck = Checkpoint.open(folder)
    assert {n: r.shape for n, r in ck.tensors.items()} == {"a": (2, 2), "b": (3,), "c": (0, 7)}
    assert ck.raw("c").shape == (0, 7)


def test_the_same_tensor_in_two_shards_is_refused(tmp_path: Path) -> None:
    folder = with_file(tmp_path, safetensors_bytes({"w": entry()}, DATA16))
    (folder / "model-2.safetensors").write_bytes(safetensors_bytes({"w": entry()}, DATA16))
    assert_refused(Checkpoint.open, folder, match="tensor w is in both")


# -- the folder: index, links, special files -----------------------------------------------------------


@pytest.mark.parametrize(
    ("weight_map", "match"),
    [
        ({"w": "../outside.safetensors"}, "not the name of a .safetensors file beside it"),
        ({"w": "/etc/passwd"}, "not the name"),
        ({"w": "sub/model.safetensors"}, "not the name"),
        ({"w": "model.safetensors\n"}, "control characters"),
        ({"w": 7}, "not a file name"),
        ({"w": "missing.safetensors"}, "missing"),
        (["model.safetensors"], "no weight_map"),
    ],
)
def test_an_index_names_only_files_beside_it(weight_map: Any, match: str, tmp_path: Path) -> None:
    folder = with_file(tmp_path, safetensors_bytes({"w": entry()}, DATA16))
    (tmp_path / "outside.safetensors").write_bytes(safetensors_bytes({"w": entry()}, DATA16))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_refused(Checkpoint.open, folder, match=match)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json", "README.md"])
def test_links_out_of_the_folder_are_refused(name: str, tmp_path: Path) -> None:
    folder = with_file(tmp_path, safetensors_bytes({"w": entry()}, DATA16))
    secret = tmp_path / "secret.txt"
    secret.write_text('{"token": "hunter2"}')
    (folder / name).unlink(missing_ok=True)
    (folder / name).symlink_to(secret)
    out = assert_refused(Checkpoint.open, folder, match="outside the checkpoint's folder")
    assert "hunter2" not in out.detail


def test_special_files_are_refused_without_blocking(tmp_path: Path) -> None:
    folder = with_file(tmp_path, safetensors_bytes({"w": entry()}, DATA16))
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")  # opening it would wait for a writer forever
    assert_refused(Checkpoint.open, folder, match="not a regular file")
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to("/dev/zero")
    assert_refused(Checkpoint.open, folder, match="config.json")


def test_a_hub_cache_snapshot_links_into_its_blobs(tmp_path: Path) -> None:
    """The honest case of links: the HF cache's snapshot files point at ../../blobs/<hash>."""
    repo = tmp_path / "models--someone--tiny"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    header, size = tensor_header({"w": (4,)})
    for name, data in (
        ("model.safetensors", safetensors_bytes(header, b"\0" * size)),
        ("config.json", b"{}"),
    ):
        (repo / "blobs" / f"blob-{name}").write_bytes(data)
        (snapshot / name).symlink_to(f"../../blobs/blob-{name}")
    assert Checkpoint.open(snapshot).names() == ["w"]


# -- config.json --------------------------------------------------------------------------------------

CONFIG_CASES = [
    ({"num_key_value_heads": 0}, "num_key_value_heads"),
    ({"num_key_value_heads": 3}, "cannot share 3 KV heads"),
    ({"num_attention_heads": 0}, "num_attention_heads"),
    ({"num_attention_heads": 3}, "not a whole number of 3 heads"),
    ({"max_position_embeddings": 2**70}, "max_position_embeddings"),
    ({"max_position_embeddings": -1}, "max_position_embeddings"),
    ({"vocab_size": 10**12}, "vocab_size"),
    ({"vocab_size": 1e12}, "vocab_size"),
    ({"vocab_size": "32000"}, "vocab_size"),
    ({"num_hidden_layers": 10**6}, "num_hidden_layers"),
    ({"num_hidden_layers": True}, "num_hidden_layers"),
    ({"hidden_size": 64}, "config.json's hidden_size"),
    ({"intermediate_size": 48}, "intermediate_size"),
    ({"vocab_size": 999}, "vocab_size gives 999"),
    ({"head_dim": 7}, "heads of 7 dimensions"),
    ({"head_dim": 8}, "× head_dim"),
    ({"rms_norm_eps": 0}, "rms_norm_eps"),
    ({"rms_norm_eps": -1e-5}, "rms_norm_eps"),
    ({"rms_norm_eps": "1e-5"}, "rms_norm_eps"),
    ({"rope_theta": -10000}, "rope_theta"),
    ({"rope_theta": 1e300}, "rope_theta"),
    ({"rope_scaling": [2.0]}, "rope_scaling should be a table"),
    ({"rope_scaling": "linear"}, "rope_scaling should be a table"),
    ({"rope_scaling": {"type": "linear", "factor": "2"}}, "factor"),
    ({"rope_scaling": {"type": "linear", "factor": -2.0}}, "factor"),
    ({"rope_scaling": {"type": 7, "factor": 2.0}}, "rope_scaling.type"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "not supported"),
    ({"rope_scaling": {"type": "yarn", "factor": 2.0}}, "original_max_position_embeddings"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0}}, "high_freq_factor"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 2**40}}, "original"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
    ({"architectures": "LlamaForCausalLM"}, "architectures"),
    ({"architectures": [7]}, "architectures"),
    ({"model_type": ["llama"]}, "model_type"),
    ({"_name_or_path": {"a": 1}}, "_name_or_path"),
    ({"bos_token_id": "1"}, "bos_token_id"),
]


@pytest.mark.parametrize(("change", "match"), CONFIG_CASES, ids=[str(c) for c, _ in CONFIG_CASES])
def test_a_config_is_checked_before_anything_is_written(
    change: dict[str, Any], match: str, sp_llama: Path, tmp_path: Path
) -> None:
    folder = copy_of(sp_llama, tmp_path)
    edit_json(folder / "config.json", **change)
    (tmp_path / "out").mkdir()
    out = assert_refused(convert, folder, tmp_path / "out" / "m.gguf", match=match)
    assert "config.json" in out.detail or "tensor" in out.detail
    assert leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("text", ["[1, 2, 3]", '"config"', "null", "{" * 5000 + "}" * 5000, '{"a": NaN}', "\xff"])
def test_a_config_that_is_not_an_object_is_refused(text: str, sp_llama: Path, tmp_path: Path) -> None:
    folder = copy_of(sp_llama, tmp_path)
    (folder / "config.json").write_bytes(text.encode("latin-1"))
    assert_refused(convert, folder, tmp_path / "m.gguf", match="config.json")


def test_a_config_lying_about_the_hidden_size_names_the_tensor_and_the_key(sp_llama: Path, tmp_path: Path) -> None:
    folder = copy_of(sp_llama, tmp_path)
    edit_json(folder / "config.json", hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    out = assert_refused(convert, folder, tmp_path / "m.gguf")
    assert "tensor lm_head.weight is 400×32" in out.detail and "hidden_size gives 64" in out.detail


def test_old_configs_with_pad_token_id_minus_one_still_convert(sp_llama: Path, tmp_path: Path) -> None:
    """transformers' early Llama conversions say pad_token_id = -1 (no pad): gguf-py raised on it."""
    folder = copy_of(sp_llama, tmp_path)
    edit_json(folder / "config.json", pad_token_id=-1)
    convert(folder, tmp_path / "m.gguf")
    assert (tmp_path / "m.gguf").is_file()


# -- tokenizer files -----------------------------------------------------------------------------


def with_tokenizer(sp_llama: Path, tmp_path: Path, files: dict[str, Any]) -> Path:
    folder = copy_of(sp_llama, tmp_path)
    for name, content in files.items():
        path = folder / name
        if content is None:
            path.unlink()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content if isinstance(content, str) else json.dumps(content))
    return folder


TOKENIZER_CASES = [
    ({"tokenizer.model": b"\x0a\xff\xff\xff\xff\x0f" + b"garbage" * 10}, "tokenizer.model"),
    ({"tokenizer.model": b""}, "tokenizer.model"),
    ({"tokenizer_config.json": {"added_tokens_decoder": ["<s>"]}}, "added_tokens_decoder"),
    ({"tokenizer_config.json": {"added_tokens_decoder": {"x": {"content": "<s>"}}}}, "malformed"),
    ({"tokenizer_config.json": {"added_tokens_decoder": {"5": {"content": 5}}}}, "malformed"),
    ({"tokenizer_config.json": {"chat_template": 42}}, "chat_template"),
    ({"tokenizer_config.json": {"chat_template": "x" * (2 * 1024 * 1024)}}, "chat_template"),
    ({"tokenizer_config.json": {"eos_token": 2}}, "eos_token"),
    ({"tokenizer_config.json": "[" * 100_000 + "]" * 100_000}, "levels deep"),
    ({"added_tokens.json": {"<x>": "5"}}, "added_tokens.json"),
    ({"chat_template.json": {"chat_template": {"a": 1}}}, "chat_template"),
    ({"chat_template.jinja": b"\xff\xfe"}, "UTF-8"),
    ({"generation_config.json": "[" * 100_000 + "]" * 100_000}, "generation_config.json"),
    ({"tokenizer.model": None, "tokenizer.json": {"model": {"type": "WordPiece"}}}, "only BPE"),
    ({"tokenizer.model": None, "tokenizer.json": {"model": []}}, "no tokenizer model"),
    ({"tokenizer.model": None, "tokenizer.json": {"model": {"type": "BPE", "vocab": {"a": -1}}}}, "vocabulary"),
    ({"tokenizer.model": None, "tokenizer.json": {"model": {"type": "BPE", "merges": ["a b", ["a", 1]]}}}, "merges"),
    ({"tokenizer.model": None, "tokenizer.json": {"model": {"type": "BPE"}, "added_tokens": [{}]}}, "added token"),
    ({"tokenizer.model": None, "tokenizer.json": {"model": {"type": "BPE"}, "post_processor": []}}, "post_processor"),
    (
        {"tokenizer.model": None, "tokenizer.json": {"model": {"type": "BPE"}, "post_processor": {"processors": 7}}},
        "processors",
    ),
    ({"tokenizer.model": None, "tokenizer.json": bpe_tokenizer_json(backtracking_pre_tokenizer(40))}, "work"),
    ({"tokenizer.model": None, "tokenizer.json": {"model": {"type": "BPE", "vocab": "x"}}}, "vocabulary"),
    ({"tokenizer.model": None, "tokenizer.json": "{" + '"a":1,' * 2_100_000 + '"b":1}'}, "values"),
]


@pytest.mark.parametrize(("files", "match"), TOKENIZER_CASES, ids=[str(i) for i in range(len(TOKENIZER_CASES))])
def test_tokenizer_files_are_bounded_and_typed(
    files: dict[str, Any], match: str, sp_llama: Path, tmp_path: Path
) -> None:
    folder = with_tokenizer(sp_llama, tmp_path, files)
    (tmp_path / "out").mkdir()
    assert_refused(convert, folder, tmp_path / "out" / "m.gguf", match=match)
    assert leftovers(tmp_path / "out") == []


def test_a_huge_tokenizer_model_is_refused_before_it_is_read(sp_llama: Path, tmp_path: Path) -> None:
    folder = copy_of(sp_llama, tmp_path)
    with (folder / "tokenizer.model").open("r+b") as f:
        f.truncate(65 * 1024 * 1024)  # sparse: no disk, but more than a tokenizer.model can be
    assert_refused(convert, folder, tmp_path / "m.gguf", match="more than a SentencePiece model can be")


def test_a_native_tokenizer_crash_is_contained(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The tokenizers library panics (a Rust panic is not an Exception) on a regex Oniguruma gives up on;
    it runs in a child whose stderr is not the user's, and the panic is one line."""
    from converters.gguf_tokenizer import load_vocab

    split = {"type": "Split", "pattern": {"Regex": r"(?:\S|\S)*\s{7}"}, "behavior": "Isolated", "invert": False}
    (tmp_path / "tokenizer.json").write_text(json.dumps(bpe_tokenizer_json(split)))
    out = assert_refused(load_vocab, tmp_path, 1000, match="PanicException")
    assert str(tmp_path / "tokenizer.json") in out.detail
    capfd.readouterr()
    from converters.errors import CheckpointError

    with pytest.raises(CheckpointError, match="PanicException"):
        load_vocab(tmp_path, 1000)
    assert "panicked" not in capfd.readouterr().err  # Rust's panic report stays off the user's terminal


# -- the model card and generation settings ------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({"README.md": "---\na: &x [1]\nb: *x\n---\n"}, "alias"),
        ({"README.md": "---\n" + "tags:\n" + "- t\n" * 60_000 + "---\n"}, "front matter is longer"),
        ({"README.md": "---\nname: 1.5\n---\n"}, "name"),
        ({"README.md": "---\nlanguage: [1, 2]\n---\n"}, "languages"),
        ({"README.md": "---\na: " + "[" * 200 + "]" * 200 + "\n---\n"}, "levels deep"),
        ({"README.md": b"---\nname: \xff\n---\n"}, "UTF-8"),
        ({"generation_config.json": {"top_k": "40"}}, "top_k"),
        ({"generation_config.json": {"temperature": [1]}}, "temperature"),
    ],
)
def test_a_model_card_is_read_within_bounds(files: dict[str, Any], match: str, sp_llama: Path, tmp_path: Path) -> None:
    folder = with_tokenizer(sp_llama, tmp_path, files)
    (tmp_path / "out").mkdir()
    assert_refused(convert, folder, tmp_path / "out" / "m.gguf", match=match)
    assert leftovers(tmp_path / "out") == []


# -- LoRA adapters ------------------------------------------------------------------------------------


def adapter(folder: Path, config: Any) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    module = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file(
        {
            f"{module}.lora_A.weight": np.zeros((4, 16), dtype=np.float32),
            f"{module}.lora_B.weight": np.zeros((16, 4), dtype=np.float32),
        },
        str(folder / "adapter_model.safetensors"),
    )
    (folder / "adapter_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ([1, 2], "JSON object"),
        ({"r": 0}, "r should be a rank"),
        ({"r": "8"}, "r should be a rank"),
        ({"r": 10**12}, "r should be a rank"),
        ({"lora_alpha": "16"}, "lora_alpha"),
        ({"lora_alpha": 1e300}, "lora_alpha"),
        ({"peft_type": ["LORA"]}, "peft_type"),
        ({"rank_pattern": ["q_proj"]}, "rank_pattern"),
        ({"rank_pattern": {"q_proj": "4"}}, "rank_pattern"),
        ({"rank_pattern": {"(": 4}}, "not a valid regular expression"),
        ({"use_rslora": "yes"}, "use_rslora"),
        ({"fan_in_fan_out": 1}, "fan_in_fan_out"),
        ("{" * 10_000 + "}" * 10_000, "not valid JSON"),
        ('{"a":' * 10_000 + "1" + "}" * 10_000, "levels deep"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_adapter_configs_are_typed(config: Any, match: str, tmp_path: Path) -> None:
    from converters.merge_lora import LoraAdapter

    base = {"r": 4, "lora_alpha": 8, "peft_type": "LORA"}
    folder = adapter(tmp_path / "lora", {**base, **config} if isinstance(config, dict) else config)
    assert_refused(LoraAdapter.open, folder, match=match)


# -- merge recipes ------------------------------------------------------------------------------------


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    tiny_llama(tmp_path / "a")
    (tmp_path / "a" / "tokenizer.json").write_text("{}")
    return tmp_path


STEP = '[[steps]]\nmethod = "slerp"\nmodel = "a"\nt = 0.5\n'
RECIPE_CASES = [
    ("base = " + "[" * 100_000 + "]" * 100_000, "levels deep"),
    ("base = 'a'\n" + "x" * (2 * 1024 * 1024), "more than a recipe"),
    ('base = "a"\nshard_size = "' + "9" * 5000 + 'GB"\n' + STEP, "shard_size"),
    ('base = "a"\nshard_size = 1e300\n' + STEP, "shard_size"),
    ('base = "a"\nshard_size = -5\n' + STEP, "shard_size"),
    ('base = "a"\n' + STEP.replace("t = 0.5", "t = inf"), "not finite"),
    ('base = "a"\n' + STEP.replace("t = 0.5", "t = nan"), "not finite"),
    ('base = "a"\n' + STEP.replace("t = 0.5", "t = 1e300"), "expected a number"),
    ('base = "a"\n' + STEP.replace("t = 0.5", "t = [" + "0.5," * 5000 + "0.5]"), "more than 4096"),
    ('base = "a"\n' + STEP.replace('model = "a"', 'model = "a\\u0000b"'), "not a path"),
    ('base = "a"\n' + STEP.replace('model = "a"', 'model = "~no-such-user-here/x"'), "no such user"),
    ('base = "' + "x" * 10_000 + '"\n' + STEP, "not a path"),
    ('base = "a"\nname = ".."\n' + STEP, "not a plain name"),
    ('base = "a"\nname = "a\\u001b[2Jb"\n' + STEP, "not a plain name"),
    ('base = "a"\n[gguf]\nouttype = "q4_k_m"\n' + STEP, "outtype 'q4_k_m'"),
    ('base = "a"\n[gguf]\nouttype = 16\n' + STEP, "outtype 16"),
    ('base = "a"\n[gguf]\npre_tokenizer = "no-such"\n' + STEP, "pre_tokenizer"),
    ('base = "a"\n[gguf]\nchat_format = "no-such"\n' + STEP, "chat_format"),
    ('base = "a"\n[gguf]\nouttpe = "f16"\n' + STEP, "unknown key 'outtpe'"),
    ('base = "a"\ngguf = [1]\n' + STEP, "[gguf] must be a table"),
    ('base = "a"\n' + STEP * 300, "more than 256 steps"),
    ('base = "a"\n' + STEP.replace('method = "slerp"', "method = [1]"), "method [1]"),
    ("[[[[", "not valid TOML"),
    (b'base = "\xff"', "not UTF-8"),
]


@pytest.mark.parametrize(("text", "match"), RECIPE_CASES, ids=[str(i) for i in range(len(RECIPE_CASES))])
def test_recipes_are_bounded_and_typed(text: str | bytes, match: str, recipe_dir: Path) -> None:
    from converters.merge_recipe import load_recipe

    path = recipe_dir / "r.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = assert_refused(load_recipe, path, match=match)
    assert str(path) in out.detail


def test_the_recipes_gguf_table_is_honoured_and_the_command_line_wins_only_when_given(
    sp_llama: Path, tmp_path: Path
) -> None:
    from converters.gguf_read import GGUFFile
    from converters.merge import merge
    from converters.merge_recipe import load_recipe

    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'base = "{sp_llama}"\n[gguf]\nouttype = "f32"\nchat_format = "chatml"\n' + STEP.replace('"a"', f'"{sp_llama}"')
    )
    unset = {"outtype": None, "pre_tokenizer": None, "chat_format": None}  # what the command line passes
    result = merge(load_recipe(recipe), tmp_path / "a.gguf", gguf=unset)
    assert result.conversion.outtype == "f32" and "chatml" in (result.conversion.chat_template or "")
    result = merge(load_recipe(recipe), tmp_path / "b.gguf", gguf={**unset, "outtype": "f16"})
    assert result.conversion.outtype == "f16"
    assert GGUFFile.open(tmp_path / "b.gguf").get("general.file_type") == 1


# -- build recipes ------------------------------------------------------------------------------------

BUILD_CASES = [
    ('name = ".."\n[sources]\na = "./a"\n', "not a plain name"),
    ('name = "."\n[sources]\na = "./a"\n', "not a plain name"),
    ('name = "a\\\\b"\n[sources]\na = "./a"\n', "not a plain name"),
    ('name = "x\\ny"\n[sources]\na = "./a"\n', "not a plain name"),
    ('name = "x"\n[sources]\na = "./a\\u0000"\n', "not a path"),
    ('name = "x"\n[sources]\na = "not a repo!!"\n', "neither a folder nor owner/repo"),
    ('name = "x"\n[sources]\na = "./a"\n[gguf]\nouttype = "q4"\n', "outtype 'q4'"),
    ('name = "x"\n[sources]\na = "./a"\n[gguf]\nkeep = "no"\n', "keep must be true or false"),
    ('name = "x"\n[sources]\na = "./a"\n[gguf]\nsource = "b"\n', "must name one of [sources]"),
    ('name = "x"\n[sources]\na = "./a"\n[gguf]\nouttpe = "f16"\n', "unknown key 'outtpe'"),
    ('name = "x"\n[sources]\na = "./a"\n[quantize]\ntypes = [1]\n', "types must be a list"),
    ('name = "x"\n[sources]\na = "./a"\n[quantize]\ntype = ["Q4_K_M"]\n', "unknown key 'type'"),
    ('name = "x"\n[sources]\na = "./a"\n[quantize]\nimatrix = 5\n', "imatrix"),
    ('name = "x"\n[sources]\na = "./a"\n[chat]\nformat = 3\n', "format"),
    (
        'name = "x"\n[sources]\na = "./a"\n[merge]\nbase = "b"\n' + STEP.replace("[[steps]]", "[[merge.steps]]"),
        "not in [sources]",
    ),
    ('name = "x"\n[sources]\na = "./a"\n[merge]\nbase = "a"\n[[merge.steps]]\nmethod = "x"\n', "method 'x'"),
    ('name = "x"\n' + "[sources]\n" + "".join(f's{i} = "./a"\n' for i in range(100)), "more than 64"),
    ("name = " + "[" * 50_000 + "]" * 50_000, "levels deep"),
]


@pytest.mark.parametrize(("text", "match"), BUILD_CASES, ids=[str(i) for i in range(len(BUILD_CASES))])
def test_build_recipes_are_checked_before_any_work(text: str, match: str, recipe_dir: Path) -> None:
    from converters.build import load_build

    path = recipe_dir / "b.toml"
    path.write_text(text)
    assert_refused(load_build, path, match=match)


# -- leftovers of killed runs ----------------------------------------------------------------------------


def test_partials_of_dead_writers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    import fcntl

    from converters.partials import clean_leftovers, hold_file

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / f".m.gguf.{dead_pid}.partial").write_bytes(b"x" * 100)
    (tmp_path / f".out.{dead_pid}.partial").mkdir()
    (tmp_path / f".out.{dead_pid}.partial" / "model.safetensors").write_bytes(b"x")
    (tmp_path / f".link.{dead_pid}.partial").symlink_to(tmp_path / "keep.txt")
    (tmp_path / "keep.txt").write_text("the user's own")
    (tmp_path / ".m.gguf.1.partial.txt").write_text("not ours: another name")
    # what versions before pids in names left: removed once an hour old, kept while fresh
    for name in (".old.gguf.partial", ".q.gguf.abcd1234.part", ".fresh.gguf.partial"):
        (tmp_path / name).write_bytes(b"x")
    for name in (".old.gguf.partial", ".q.gguf.abcd1234.part"):
        os.utime(tmp_path / name, (0, 0))
    mine = hold_file(tmp_path, "live.gguf")  # this process, writing
    locked = tmp_path / f".locked.gguf.{dead_pid}.partial"  # a dead pid, but a lock held: someone writes it
    locked.write_bytes(b"x")
    fd = os.open(locked, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        removed = {p.name for p in clean_leftovers(tmp_path)}
    finally:
        os.close(fd)
        mine.remove()
    assert removed == {
        f".m.gguf.{dead_pid}.partial",
        f".out.{dead_pid}.partial",
        f".link.{dead_pid}.partial",
        ".old.gguf.partial",
        ".q.gguf.abcd1234.part",
    }
    assert (tmp_path / "keep.txt").read_text() == "the user's own" and locked.exists()
    assert (tmp_path / ".m.gguf.1.partial.txt").exists() and (tmp_path / ".fresh.gguf.partial").exists()


KILLED_CONVERT = """
import os, signal, sys
from pathlib import Path
from converters.hf_to_gguf import convert

def progress(done, total, *rest):
    if done == 3:  # mid-file: a SIGKILL leaves no chance to clean up
        os.kill(os.getpid(), signal.SIGKILL)

convert(Path(sys.argv[1]), Path(sys.argv[2]), progress=progress)
"""


def test_a_conversion_killed_mid_file_leaves_a_partial_the_next_run_removes(sp_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_CONVERT), str(sp_llama), str(out)],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL
    left = leftovers(out.parent)
    assert len(left) == 1 and left[0].startswith(".m.gguf.") and left[0].endswith(".partial")
    r = run_cattery("convert", str(sp_llama), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert leftovers(out.parent) == ["m.gguf"]


# -- hypothesis: mutated real files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_shard(sp_llama: Path) -> bytes:
    return (sp_llama / "model.safetensors").read_bytes()


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _open_and_check_spans(folder: Path) -> None:
    """Open; if accepted, every tensor's bytes lie within the data section, none shared."""
    ck = Checkpoint.open(folder)
    size = (folder / "model.safetensors").stat().st_size
    spans = sorted((r.offset, r.offset + r.nbytes) for r in ck.tensors.values())
    start = 8 + struct.unpack("<Q", (folder / "model.safetensors").read_bytes()[:8])[0]
    for (a, b), nxt in zip(spans, [*spans[1:], (size, size)], strict=True):
        assert start <= a <= b <= nxt[0] <= size


@MUTATIONS
@given(data=st.data())
def test_mutated_safetensors_headers_are_bounded(data: st.DataObject, real_shard: bytes, tmp_path: Path) -> None:
    (n,) = struct.unpack("<Q", real_shard[:8])
    header = json.loads(real_shard[8 : 8 + n])
    body = real_shard[8 + n :]
    kind = data.draw(st.sampled_from(["length", "field", "entry", "bytes"]))
    if kind == "length":
        length = data.draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(n - 64, n + 64).filter(lambda x: x >= 0)))
        blob = struct.pack("<Q", length) + real_shard[8:]
    elif kind == "field":
        name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        key = data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        header[name][key] = data.draw(JSON_VALUES)
        blob = safetensors_bytes(header, body)
    elif kind == "entry":
        name = data.draw(st.sampled_from(sorted(header)))
        header[name] = data.draw(JSON_VALUES)
        blob = safetensors_bytes(header, body)
    else:
        raw = bytearray(real_shard[8 : 8 + n])
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        blob = real_shard[:8] + bytes(raw) + body
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(blob)
    out = run_bounded(_open_and_check_spans, folder)
    assert out.bounded, f"{kind}: {out}"


CONFIG_KEYS = [
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "vocab_size",
    "tie_word_embeddings",
    "head_dim",
    "architectures",
    "model_type",
    "bos_token_id",
    "eos_token_id",
    "torch_dtype",
]


@MUTATIONS
@given(data=st.data())
def test_mutated_configs_are_bounded(data: st.DataObject, sp_llama: Path, tmp_path: Path) -> None:
    config = json.loads((sp_llama / "config.json").read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(CONFIG_KEYS))
        config[key] = data.draw(
            st.one_of(
                JSON_VALUES,
                st.integers(-4, 1 << 40),
                st.sampled_from([0, 1, 2, 3, 31, 32, 33, 64, 401, 2**31, 2**32, 2**63, 1e-300, 1e300, 0.5]),
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["linear", "yarn", "llama3", "dynamic"])},
                    optional={
                        "factor": JSON_VALUES,
                        "original_max_position_embeddings": JSON_VALUES,
                        "low_freq_factor": JSON_VALUES,
                        "high_freq_factor": JSON_VALUES,
                    },
                ),
            )
        )
    if data.draw(st.booleans()):
        config.pop(data.draw(st.sampled_from(sorted(config))), None)
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    folder = Path(shutil.copytree(sp_llama, work / "m"))
    (folder / "config.json").write_text(json.dumps(config))
    out_dir = work / "out"
    out_dir.mkdir()
    out = run_bounded(convert, folder, out_dir / "m.gguf")
    assert out.bounded, f"{config}: {out}"
    assert leftovers(out_dir) == (["m.gguf"] if out.kind == "ok" else [])


RECIPE = """name = "tiny"
base = "a"
dtype = "bf16"
shard_size = "4KB"
[gguf]
outtype = "f16"
[[steps]]
method = "gradient"
model = "a"
values = [0.9, 0.0]
layers = [0, 1]
[[steps]]
method = "linear"
models = ["a"]
weights = [[{filter = "mlp", value = 0.5}, {value = 0.5}], [0.1, 0.2]]
"""


@MUTATIONS
@given(data=st.data())
def test_mutated_recipes_are_bounded(data: st.DataObject, recipe_dir: Path) -> None:
    from converters.merge import plan_merge
    from converters.merge_recipe import load_recipe

    def plan(path: Path) -> object:
        model = plan_merge(load_recipe(path))
        model.close()
        return len(model.tensors)

    text = bytearray(RECIPE.encode())
    kind = data.draw(st.sampled_from(["bytes", "value"]))
    if kind == "bytes":
        for _ in range(data.draw(st.integers(1, 6))):
            i = data.draw(st.integers(0, len(text) - 1))
            op = data.draw(st.sampled_from(["set", "insert", "delete"]))
            if op == "set":
                text[i] = data.draw(st.integers(0, 255))
            elif op == "insert":
                text[i:i] = data.draw(st.binary(min_size=1, max_size=4))
            else:
                del text[i]
    else:
        literal = data.draw(
            st.sampled_from(
                [
                    '"a"',
                    '".."',
                    "1e400",
                    "-1",
                    "0",
                    "nan",
                    "inf",
                    "[]",
                    "{}",
                    '"f32"',
                    '"q4"',
                    "true",
                    '"~x/y"',
                    '"a\\u0000"',
                    "[1, [2, [3]]]",
                    '{values = [1], layers = "x"}',
                    "9" * 400,
                    '"' + "9" * 30 + 'GB"',
                ]
            )
        )
        lines = RECIPE.splitlines()
        i = data.draw(st.sampled_from([k for k, line in enumerate(lines) if " = " in line]))
        lines[i] = lines[i].split(" = ")[0] + " = " + literal
        text = bytearray("\n".join(lines).encode())
    fd, name = tempfile.mkstemp(suffix=".toml", dir=recipe_dir)
    os.close(fd)
    path = Path(name)
    path.write_bytes(bytes(text))
    out = run_bounded(plan, path)
    assert out.bounded, f"{bytes(text)!r}: {out}"


# -- the command line, as a user runs it ---------------------------------------------------------------


def test_cattery_convert_refuses_hostile_checkpoints_in_one_line(sp_llama: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    lying = copy_of(sp_llama, tmp_path, "lying")
    edit_json(lying / "config.json", vocab_size=10**12)
    r = run_cattery("convert", str(lying), "-o", str(out_dir / "m.gguf"))
    assert "vocab_size" in assert_one_line_failure(r)
    linked = copy_of(sp_llama, tmp_path, "linked")
    (linked / "tokenizer.model").unlink()
    (tmp_path / "secret").write_text("the user's own")
    (linked / "tokenizer.model").symlink_to(tmp_path / "secret")
    r = run_cattery("convert", str(linked), "-o", str(out_dir / "m.gguf"))
    assert "outside the checkpoint's folder" in assert_one_line_failure(r)
    bad = copy_of(sp_llama, tmp_path, "bad")
    (bad / "model.safetensors").write_bytes(safetensors_bytes({"w": entry(offsets=[-16, 0])}, DATA16))
    r = run_cattery("convert", str(bad), "-o", str(out_dir / "m.gguf"))
    assert "not a span" in assert_one_line_failure(r)
    assert leftovers(out_dir) == []


def test_cattery_merge_and_build_refuse_hostile_recipes_in_one_line(recipe_dir: Path, cattery_home: Path) -> None:
    deep = recipe_dir / "deep.toml"
    deep.write_text("base = " + "[" * 100_000 + "]" * 100_000)
    r = run_cattery("merge", str(deep), "-o", str(recipe_dir / "out"))
    assert "levels deep" in assert_one_line_failure(r)
    typo = recipe_dir / "typo.toml"
    typo.write_text('base = "a"\n[gguf]\nouttype = "q4_k_m"\n' + STEP)
    r = run_cattery("merge", str(typo), "-o", str(recipe_dir / "out.gguf"))
    assert "outtype 'q4_k_m'" in assert_one_line_failure(r)
    assert not (recipe_dir / "out").exists() and not (recipe_dir / "out.gguf").exists()
    escape = recipe_dir / "escape.toml"
    escape.write_text('name = ".."\n[sources]\na = "./a"\n')
    r = run_cattery("build", str(escape), home=cattery_home)
    assert "not a plain name" in assert_one_line_failure(r)
    models = cattery_home / "data" / "models"
    assert not models.exists() or list(models.iterdir()) == []


def test_cattery_quantize_dry_run_refuses_a_hostile_imatrix_in_one_line(model_path: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.imatrix"
    bogus.write_bytes(struct.pack("<i", 3) + struct.pack("<i", 10**6) + b"name")
    r = run_cattery("quantize", str(model_path), "--type", "Q4_K_M", "--imatrix", str(bogus), "--dry-run")
    assert "bogus.imatrix" in assert_one_line_failure(r)
    assert leftovers(tmp_path) == ["bogus.imatrix"]
