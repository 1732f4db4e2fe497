"""Hostile checkpoints, tokenizers, adapters and recipes, built file by file, and the worst of them as cases.

The builders write what no honest tool writes: a safetensors file with any header
bytes and any length prefix, a config.json that lies, a tokenizer.json whose
pre-tokenizer regexes backtrack, a recipe nested a hundred thousand deep. A tiny
llama checkpoint (`tiny_llama`: real tensors, no tokenizer, no training) is the honest
starting point most cases mutate.

`WORST_CASES` are the inputs that used to hang, recurse or eat memory (or that would
if a bound were dropped): each builds its input in a temporary folder and pushes it
through the real code path; bench/hostile.py times each and measures its peak
memory, and tests/hostile/test_hostile_converters.py runs them under tests.hostile.bounds's bounds.
"""

from __future__ import annotations

import json
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# -- builders -------------------------------------------------------------------------------------


def safetensors_bytes(header: dict[str, Any] | bytes, data: bytes = b"", *, length: int | None = None) -> bytes:
    """A safetensors file: the length prefix (true unless `length` lies), the header, the data."""
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def tensor_header(names_shapes: dict[str, tuple[int, ...]], dtype: str = "F32") -> tuple[dict[str, Any], int]:
    """An honest header for F32 tensors laid end to end; (header, data bytes)."""
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in names_shapes.items():
        n = int(np.prod(shape)) * 4 if shape else 4
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    return header, offset


def llama_config(**override: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 16,
        "intermediate_size": 24,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": 32,
        "tie_word_embeddings": False,
    }
    config.update(override)
    return config


def llama_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    hd = h // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * hd
    shapes: dict[str, tuple[int, ...]] = {"lm_head.weight": (v, h), "model.embed_tokens.weight": (v, h)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "mlp.down_proj.weight": (h, f),
            p + "mlp.gate_proj.weight": (f, h),
            p + "mlp.up_proj.weight": (f, h),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.v_proj.weight": (kv, h),
        }
    shapes["model.norm.weight"] = (h,)
    return dict(sorted(shapes.items()))


def tiny_llama(
    folder: Path,
    *,
    config: dict[str, Any] | None = None,
    shapes_from: dict[str, Any] | None = None,
    tokenizer: bool = False,
) -> Path:
    """A one-layer llama of random F32 weights; `config` is written as given (it may lie), the tensors
    are shaped as `shapes_from` (an honest config) says; with `tokenizer`, a SentencePiece model trained
    here in ~40 ms (so that a conversion gets as far as its vocabulary)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer:
        from tests.hf_fixtures import train_sentencepiece

        train_sentencepiece(folder / "tokenizer.model")
    honest = shapes_from or llama_config()
    header, size = tensor_header(llama_shapes(honest))
    rng = np.random.default_rng(0)
    data = rng.standard_normal(size // 4).astype("<f4").tobytes()
    (folder / "model.safetensors").write_bytes(safetensors_bytes(header, data))
    (folder / "config.json").write_text(json.dumps(honest if config is None else config))
    return folder


def bpe_tokenizer_json(pre_tokenizer: dict[str, Any] | None = None, vocab: dict[str, int] | None = None) -> dict:
    """A small BPE tokenizer.json holding every character of llama.cpp's check string (so that the
    tokenizers library encodes it without an unknown token); its pre-tokenizer hash is nobody's."""
    if vocab is None:
        from converters.gguf_tokenizer import pre_tokenizers

        vocab = {c: i for i, c in enumerate(sorted(set(pre_tokenizers().check_text)))}
    return {
        "version": "1.0",
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": None,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [],
        },
    }


# A Split regex that backtracks for ~1.5 s on llama.cpp's check string, just under Oniguruma's retry limit.
BACKTRACKING_REGEX = r"(?:\S|\S){1,22}\s{7}"


def backtracking_pre_tokenizer(n: int) -> dict[str, Any]:
    split = {"type": "Split", "pattern": {"Regex": BACKTRACKING_REGEX}, "behavior": "Isolated", "invert": False}
    return {"type": "Sequence", "pretokenizers": [split] * n}


def nested_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# -- the worst cases ------------------------------------------------------------------------------


def _checkpoint_with(file_bytes: bytes) -> object:
    from converters.checkpoint import Checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text(json.dumps(llama_config()))
        (folder / "model.safetensors").write_bytes(file_bytes)
        return Checkpoint.open(folder)


def header_length_2_60() -> object:
    """A length prefix of 2^60: the old reader asked for that many bytes."""
    return _checkpoint_with(safetensors_bytes(b"{}", length=1 << 60))


def header_nested_100k() -> object:
    """A header of 100,000 nested arrays: json.loads' recursion, then whoever walked it."""
    raw = nested_json(100_000)
    return _checkpoint_with(safetensors_bytes(raw))


def _tiny_entries(prefix: bytes = b"") -> bytes:
    """4 MiB of the smallest valid entries (~75,000 zero-sized tensors): the most objects a header can make."""
    entry = b'"' + prefix + b'%06d":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},'
    body = b"".join(entry % i for i in range((4 * 1024 * 1024 - 64) // len(entry % 0)))
    return safetensors_bytes(b"{" + body.rstrip(b",") + b"}")


def header_of_tiny_entries() -> object:
    """One shard of ~75,000 zero-sized tensors: accepted, in about a second."""
    return _checkpoint_with(_tiny_entries())


def shards_of_tiny_entries() -> object:
    """Many shards of ~75,000 tensors each: refused once the checkpoint passes 100,000 tensors."""
    from converters.checkpoint import Checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text(json.dumps(llama_config()))
        for i in range(8):
            (folder / f"model-{i}.safetensors").write_bytes(_tiny_entries(b"s%d." % i))
        return Checkpoint.open(folder)


def negative_offsets() -> object:
    """A tensor whose span starts before the data: it would map the header's bytes as weights."""
    header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [-16, 0]}}
    return _checkpoint_with(safetensors_bytes(header, b"\0" * 16))


def _convert_with_config(config: dict[str, Any]) -> object:
    from converters.hf_to_gguf import convert

    with tempfile.TemporaryDirectory() as tmp:
        folder = tiny_llama(Path(tmp) / "m", config=config, tokenizer=True)
        return convert(folder, Path(tmp) / "out.gguf")


def vocab_size_1e12() -> object:
    """vocab_size = 10^12: the old converter built a trillion padding tokens (75 s to MemoryError)."""
    return _convert_with_config(llama_config(vocab_size=10**12))


def layers_1e6() -> object:
    """num_hidden_layers = 10^6: a tensor-name map of a million layers."""
    return _convert_with_config(llama_config(num_hidden_layers=10**6))


def context_2_70() -> object:
    """max_position_embeddings = 2^70: does not fit the GGUF's uint32."""
    return _convert_with_config(llama_config(max_position_embeddings=2**70))


def backtracking_tokenizer() -> object:
    """tokenizer.json chaining 40 backtracking regexes: ~60 s of Oniguruma, holding the GIL, before the bound."""
    from converters.gguf_tokenizer import load_vocab

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "tokenizer.json").write_text(json.dumps(bpe_tokenizer_json(backtracking_pre_tokenizer(40))))
        return load_vocab(folder, 1000)


def tokenizer_of_empty_objects() -> object:
    """A 12 MB tokenizer.json of 4 million empty objects: ~300 MB of Python dicts once parsed."""
    from converters.gguf_tokenizer import load_vocab

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = bpe_tokenizer_json()
        text = json.dumps(data).replace('"added_tokens": []', '"added_tokens": [' + ",".join(["{}"] * 4_000_000) + "]")
        (folder / "tokenizer.json").write_text(text)
        return load_vocab(folder, 1000)


def tokenizer_of_530k_tokens() -> object:
    """A 10 MB tokenizer.json of 530,000 tokens, just under the cost bound: ~130 MB to parse, then refused
    for holding more tokens than any model's vocabulary may (before the tokenizers library builds them)."""
    from converters.gguf_tokenizer import load_vocab

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        vocab = bpe_tokenizer_json()["model"]["vocab"]
        vocab.update({f"t{i}": i for i in range(len(vocab), 530_000)})
        (folder / "tokenizer.json").write_text(json.dumps(bpe_tokenizer_json(vocab=vocab)))
        del vocab
        return load_vocab(folder, 1 << 18)


def readme_alias_bomb() -> object:
    """A model card whose front matter nests YAML aliases nine deep: a billion strings once expanded."""
    import gguf

    from converters.gguf_metadata import write_general

    lines = ["---", 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    lines += ["name: *a8", "---", "# a model"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "m"
        folder.mkdir()
        (folder / "README.md").write_text("\n".join(lines))
        writer = gguf.GGUFWriter(Path(tmp) / "x.gguf", "llama")
        name = write_general(writer, folder, None, 1000)
        writer.write_header_to_file()  # as a conversion goes on: the expanded name is packed here
        writer.write_kv_data_to_file()
        writer.close()
        return name


def lora_backtracking_pattern() -> object:
    """An adapter's rank_pattern that backtracks catastrophically in Python's re, which cannot be interrupted."""
    from safetensors.numpy import save_file

    from converters.merge_lora import LoraAdapter

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        module = "base_model.model.model.layers.0.self_attn.q_proj_" + "a" * 40 + "-"
        tensors = {
            f"{module}.lora_A.weight": np.zeros((4, 16), dtype=np.float32),
            f"{module}.lora_B.weight": np.zeros((16, 4), dtype=np.float32),
        }
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "rank_pattern": {r"(\w|\w)+": 4}}
        (folder / "adapter_config.json").write_text(json.dumps(config))
        return LoraAdapter.open(folder)


def recipe_nested_100k() -> object:
    """A merge recipe of 100,000 nested arrays: tomllib recursed into RecursionError."""
    from converters.merge_recipe import load_recipe

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.toml"
        path.write_text("base = " + "[" * 100_000 + "]" * 100_000 + "\n")
        return load_recipe(path)


def recipe_shard_size_digits() -> object:
    """shard_size = "9…9GB" with 5,000 digits: float() made it inf, int(inf) raised OverflowError."""
    from converters.merge_recipe import load_recipe

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tiny_llama(folder / "a")
        path = folder / "r.toml"
        path.write_text(
            f'base = "a"\nshard_size = "{"9" * 5000}GB"\n[[steps]]\nmethod = "slerp"\nmodel = "a"\nt = 0.5\n'
        )
        return load_recipe(path)


WORST_CASES: list[tuple[str, Callable[[], object]]] = [
    ("safetensors header length 2^60", header_length_2_60),
    ("safetensors header nested 100k deep", header_nested_100k),
    ("safetensors header of 75k tiny entries", header_of_tiny_entries),
    ("8 safetensors shards of 75k tiny entries", shards_of_tiny_entries),
    ("safetensors negative offsets", negative_offsets),
    ("config vocab_size 10^12", vocab_size_1e12),
    ("config num_hidden_layers 10^6", layers_1e6),
    ("config max_position_embeddings 2^70", context_2_70),
    ("tokenizer.json 40 backtracking regexes", backtracking_tokenizer),
    ("tokenizer.json of 4M empty objects", tokenizer_of_empty_objects),
    ("tokenizer.json of 530k tokens", tokenizer_of_530k_tokens),
    ("README.md YAML alias bomb", readme_alias_bomb),
    ("LoRA rank_pattern backtracking regex", lora_backtracking_pattern),
    ("recipe nested 100k deep", recipe_nested_100k),
    ("recipe shard_size of 5000 digits", recipe_shard_size_digits),
]
