"""Reading the files of a checkpoint from a stranger: the folder's own regular files, bounded, JSON checked.

Three things can go wrong before any parsing starts, and each is closed here once:

- reach: a file of the folder may be a symlink to `~/.ssh/id_rsa` or `/dev/zero`; a merge
  would copy it into its output. A file must resolve inside the folder (or, for a
  snapshot in the Hugging Face cache, inside its repository, whose `blobs/` the
  snapshot's links point into) and be a regular file: a FIFO would block forever.
- size: every kind of file has a bound far above any honest one (`LIMITS`);
- memory: a JSON file of `{},{},{}` costs ~70 bytes of Python objects per 3 bytes of
  text, so besides its size the number of values it can hold is bounded
  (`MAX_JSON_ITEMS`, ~160 MB at worst), counted on the raw bytes before parsing.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

from app.errors import InputError
from app.untrusted import parse_json, read_bounded
from converters.errors import CheckpointError

MiB = 1024 * 1024
# The largest honest ones seen: config.json ~50 KB, tokenizer.json 9 MB (Llama 3, Mistral Nemo; Gemma 3's,
# not a llama, is 33 MB),
# tokenizer.model 4 MB, an index of a 405B model ~100 KB, tokenizer_config.json ~1 MB.
LIMITS = {
    "config.json": 1 * MiB,
    "generation_config.json": 1 * MiB,
    "adapter_config.json": 4 * MiB,
    "model.safetensors.index.json": 16 * MiB,
    "tokenizer.json": 24 * MiB,
    "tokenizer_config.json": 16 * MiB,
    "special_tokens_map.json": 1 * MiB,
    "added_tokens.json": 16 * MiB,
    "vocab.json": 16 * MiB,
    "merges.txt": 16 * MiB,
    "tokenizer.model": 64 * MiB,
    "chat_template.jinja": 1 * MiB,
    "chat_template.json": 1 * MiB,
    "README.md": 16 * MiB,
}
DEFAULT_LIMIT = 1 * MiB
# What one JSON file may cost (`json_cost`): ~85 bytes of Python objects per unit at worst, so ~140 MB.
# Llama 3's tokenizer.json (128k tokens, 280k merges as pairs) costs about 1.3M.
MAX_JSON_ITEMS = 1_600_000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def folder_root(folder: Path) -> Path:
    """Where the files of `folder` may point: the folder itself, or the repository of an HF cache snapshot."""
    real = Path(folder).resolve()
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith(("models--", "datasets--")):
        return real.parent.parent
    return real


def own_file(path: Path, folder: Path, *, required: bool = True) -> Path | None:
    """`path` if it is a regular file of `folder` (links only within it); None if absent and not required."""
    path = Path(path)
    try:
        path.lstat()
    except FileNotFoundError:
        if required:
            raise CheckpointError(f"{path}: no such file") from None
        return None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or type(exc).__name__}") from None
    try:
        real = path.resolve(strict=True)
        mode = real.stat().st_mode
    except (OSError, RuntimeError):  # a dangling link, a loop
        raise CheckpointError(f"{path}: a link that leads nowhere") from None
    root = folder_root(folder)
    if not real.is_relative_to(root):
        raise CheckpointError(
            f"{path}: a link to {real}, outside the checkpoint's folder; a checkpoint's files must be its own"
        )
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path}: not a regular file")
    return path


def limit_of(path: Path) -> int:
    name = Path(path).name
    if name.endswith(".safetensors"):
        return 1 << 62  # read through the header, never whole
    return LIMITS.get(name, DEFAULT_LIMIT)


def read_bytes(path: Path, folder: Path, *, max_bytes: int | None = None, what: str = "file") -> bytes:
    own_file(path, folder)
    try:
        return read_bounded(Path(path), max_bytes or limit_of(path), what)
    except InputError as exc:
        raise CheckpointError(str(exc)) from None


def parse_json_bytes(raw: bytes, source: str, *, max_items: int = MAX_JSON_ITEMS) -> Any:
    try:
        return parse_json(raw, source, max_cost=max_items)
    except InputError as exc:
        raise CheckpointError(str(exc)) from None


def read_json(path: Path, folder: Path, *, kind: type = dict, max_bytes: int | None = None) -> Any:
    """A JSON file of the folder, bounded and checked, that must be a `kind` (an object by default)."""
    data = parse_json_bytes(read_bytes(path, folder, max_bytes=max_bytes, what=Path(path).name), str(path))
    if not isinstance(data, kind):
        expected = "a JSON object" if kind is dict else f"a JSON {kind.__name__}"
        raise CheckpointError(f"{path}: should be {expected}, not {type(data).__name__}")
    return data


def read_json_if_present(path: Path, folder: Path, *, kind: type = dict) -> Any:
    """As `read_json`, or None when the file is not there."""
    if own_file(path, folder, required=False) is None:
        return None
    return read_json(path, folder, kind=kind)


def check_name_text(text: str, source: str, what: str, *, max_len: int = 1024) -> str:
    """A name from a file (a tensor's, a token's): bounded, no control characters."""
    if not text or len(text) > max_len:
        raise CheckpointError(f"{source}: {what} {text[:40]!r} is empty or longer than {max_len} characters")
    if _CONTROL.search(text):
        raise CheckpointError(f"{source}: {what} {text[:40]!r} holds control characters")
    return text
