"""The files of a Hugging Face checkpoint besides its weights, and the weights Cattery refuses.

The hub fetches exactly these and the converters copy exactly these, so one list serves
both: a file the converters would read is never missing from a download. Pickled weights
are refused everywhere because unpickling runs whatever code the file carries.
"""

from __future__ import annotations

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
CHECKPOINT_FILES = ("config.json", "model.safetensors.index.json", *TOKENIZER_FILES)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
