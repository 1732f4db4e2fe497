"""Hugging Face checkpoints made in the test run, for the converters' tests.

`unpacked_bundled` is the bundled SmolLM2 GGUF turned back into an HF folder by
`cattery unpack` (GPT-2-style BPE, GQA, tied embeddings). `random_llama` is a small
llama with random weights and a SentencePiece tokenizer trained here on generated
text, in any of the shapes the converter must handle: MHA or GQA, tied or untied
embeddings, RoPE scaling, added tokens, F32/F16/BF16 weights.

The Q and K weights are scaled ×10: with the small weights of a fresh init the
attention is nearly uniform and a wrong Q/K permutation barely moves the logits;
with sharp attention it changes them completely.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

TEXT = (
    "the cat sat on a mat and looked at the moon while the dog slept near the warm fire "
    "every night she told stories about dragons castles rivers and old kings who ruled "
    "distant lands full of gold silver and quiet forests where birds sang songs of rain "
    "numbers like 12 345 and 6789 appear too, with punctuation: commas; colons! questions? "
    "Capital Letters Start Some Words Like Paris London Tokyo Cattery Llama Mistral"
)
WORDS = tuple(TEXT.split(" "))


def training_lines(n: int = 600, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 16)))) for _ in range(n)]


def train_sentencepiece(path: Path, vocab_size: int = 400, seed: int = 0) -> Path:
    """A Llama-style SentencePiece model: BPE, byte fallback, digits split, no normalization."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_lines(seed=seed)),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return path


def _added_token(content: str, special: bool) -> dict[str, Any]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": special,
    }


def random_llama(
    folder: Path,
    *,
    n_head: int = 4,
    n_kv_head: int = 2,
    tied: bool = False,
    rope_scaling: dict[str, Any] | None = None,
    added_tokens: Sequence[tuple[str, bool]] = (),
    n_layer: int = 2,
    hidden: int = 64,
    ffn: int = 96,
    dtype: str = "F32",
    seed: int = 0,
    context: int = 512,
    rope_theta: float | None = 10000.0,
    qk_scale: float = 10.0,
    chat_template: str | None = None,
    config_extra: dict[str, Any] | None = None,
    bpe_from: Path | None = None,
) -> Path:
    """Write a random llama checkpoint into `folder` (created) and return it.

    `added_tokens` are (text, special) pairs given ids after the SentencePiece pieces,
    listed in tokenizer_config.json's added_tokens_decoder as HF writes them.
    `bpe_from` names a folder whose BPE tokenizer (tokenizer.json and its config) is
    copied instead of training a SentencePiece model.
    """
    import shutil

    from converters.checkpoint import ShardedWriter, TensorPlan

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if bpe_from is not None:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(Path(bpe_from) / name, folder / name)
        vocab = json.loads((Path(bpe_from) / "config.json").read_text())["vocab_size"]
    else:
        from sentencepiece import SentencePieceProcessor

        sp_path = train_sentencepiece(folder / "tokenizer.model", seed=seed)
        sp = SentencePieceProcessor(model_file=str(sp_path))
        n_sp = sp.vocab_size()
        vocab = n_sp + len(added_tokens)
    head_dim = hidden // n_head
    rng = np.random.default_rng(seed)

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    tensors: dict[str, np.ndarray] = {"model.embed_tokens.weight": normal((vocab, hidden), 0.5)}
    for i in range(n_layer):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = (1 + normal((hidden,), 0.1)).astype(np.float32)
        tensors[p + "self_attn.q_proj.weight"] = normal((n_head * head_dim, hidden), 0.02 * qk_scale)
        tensors[p + "self_attn.k_proj.weight"] = normal((n_kv_head * head_dim, hidden), 0.02 * qk_scale)
        tensors[p + "self_attn.v_proj.weight"] = normal((n_kv_head * head_dim, hidden), 0.1)
        tensors[p + "self_attn.o_proj.weight"] = normal((hidden, n_head * head_dim), 0.1)
        tensors[p + "post_attention_layernorm.weight"] = (1 + normal((hidden,), 0.1)).astype(np.float32)
        tensors[p + "mlp.gate_proj.weight"] = normal((ffn, hidden), 0.1)
        tensors[p + "mlp.up_proj.weight"] = normal((ffn, hidden), 0.1)
        tensors[p + "mlp.down_proj.weight"] = normal((hidden, ffn), 0.1)
    tensors["model.norm.weight"] = (1 + normal((hidden,), 0.1)).astype(np.float32)
    if not tied:
        tensors["lm_head.weight"] = normal((vocab, hidden), 0.1)

    names = sorted(tensors)  # as HF's safetensors files list them
    plan = [TensorPlan(n, dtype if tensors[n].ndim > 1 else "F32", tensors[n].shape) for n in names]
    with ShardedWriter(folder, plan) as w:
        for n in names:
            w.write(n, tensors[n])
        w.close()

    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv_head,
        "hidden_act": "silu",
        "max_position_embeddings": context,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype],
    }
    if rope_theta is not None:
        config["rope_theta"] = rope_theta
    if rope_scaling is not None:
        config["rope_scaling"] = rope_scaling
    config.update(config_extra or {})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if bpe_from is not None:
        return folder

    decoder = {str(i): _added_token(sp.IdToPiece(i), True) for i in (0, 1, 2)}
    for k, (text, special) in enumerate(added_tokens):
        decoder[str(n_sp + k)] = _added_token(text, special)
    tok_config: dict[str, Any] = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "added_tokens_decoder": decoder,
        "tokenizer_class": "LlamaTokenizer",
        "model_max_length": context,
    }
    if chat_template is not None:
        tok_config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2)
    )
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    return folder


def unpacked_bundled(tmp_path: Path, model_path: Path | None = None) -> Path:
    """The bundled SmolLM2 GGUF unpacked to an HF folder (F32 weights: its dequantized values)."""
    from app.hub.bundled import find_bundled_model
    from converters.unpack import unpack

    src = model_path or find_bundled_model()
    if src is None:
        raise RuntimeError("the bundled model is not installed")
    return unpack(src, Path(tmp_path) / "smollm2-hf")


def llama3_end_of_turn(folder: Path) -> Path:
    """Make a folder with the bundled BPE tokenizer Llama-3-Instruct-like, in place: the end
    of text is the EOS and token 3 becomes `<|eot_id|>`, the end of a turn."""
    data = json.loads((folder / "tokenizer.json").read_text())
    for entry in data["added_tokens"]:
        if entry["id"] == 3:
            entry["content"] = "<|eot_id|>"
    vocab = data["model"]["vocab"]
    vocab["<|eot_id|>"] = vocab.pop("<repo_name>")
    (folder / "tokenizer.json").write_text(json.dumps(data))
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    tok_config["added_tokens_decoder"]["3"]["content"] = "<|eot_id|>"
    tok_config["eos_token"] = "<|endoftext|>"
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return folder
