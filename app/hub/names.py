"""How models on the hub are named: `owner/repo[:file|:QUANT]`, quant types from file names,
and split GGUF files (`…-00001-of-00003.gguf`) grouped as one model.

Every name here may come from a stranger (a hub answer, or a ref typed on the command line)
and some of them become paths in the Hugging Face cache: a repo id becomes a folder, a file
name a link in a snapshot, a commit id and a revision folder names, a digest a blob's name.
So each kind has one rule, checked before it touches a path, and refused in one line that
shows the offending text escaped (`shown`), never raw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

SPLIT_RE = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
# The quant types llama.cpp writes into file names, longest first so Q4_K_M wins over Q4_K.
QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])("
    r"IQ[1-4]_(?:XXS|XS|NL|S|M)|IQ1_[SM]|Q[2-6]_K_(?:XL|L|M|S)|Q[2-8]_K|Q[4-8]_[01]|Q3_K_XL|TQ[12]_0|MXFP4"
    r"|BF16|F16|F32|FP16|FP32"
    r")(?![A-Za-z0-9])",
    re.IGNORECASE,
)

# The hub's own rule for a repo id (huggingface_hub's validate_repo_id), ASCII only: each
# half starts and ends with a letter, digit or underscore, no `--` or `..`, 96 characters in all.
_REPO_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
REPO_RE = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$")
MAX_REPO_CHARS = 96
# A branch or tag as git allows it, kept to characters that are safe as folder names under refs/.
_REVISION_PART = re.compile(r"^[A-Za-z0-9_+=,@-][A-Za-z0-9_.+=,@-]*$")
MAX_REVISION_CHARS = 200
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")  # a git commit (and a git blob id): SHA-1 in hex
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# A file name in a repo: each folder or file name at most this many bytes (below every disk's
# 255, with room for the suffixes Cattery adds beside it), the whole path at most so many parts.
MAX_NAME_BYTES = 200
MAX_PATH_PARTS = 32
MAX_SELECTOR_CHARS = 1000


def shown(value: Any, limit: int = 80) -> str:
    """A value from outside as it may appear in a one-line message: printable text as it is,
    anything else (controls, newlines, bidi overrides, other types) escaped, and cut short."""
    if isinstance(value, str):
        if value.isprintable() and len(value) <= limit:
            return value
        return repr(value[:limit]) + ("…" if len(value) > limit else "")
    text = repr(value)
    return f"{type(value).__name__} {text[:limit]}{'…' if len(text) > limit else ''}"


def quant_of(filename: str) -> str | None:
    """The quant type a file's name says, upper-case (`q4_k_m` → `Q4_K_M`), or None."""
    matches = QUANT_RE.findall(filename.rsplit("/", 1)[-1])
    if not matches:
        return None
    q = matches[-1].upper()
    return {"FP16": "F16", "FP32": "F32"}.get(q, q)


def is_repo_id(text: str) -> bool:
    return (
        isinstance(text, str)
        and len(text) <= MAX_REPO_CHARS
        and bool(REPO_RE.match(text))
        and "--" not in text
        and ".." not in text
        and not text.endswith(".gguf")
    )


def repo_problem(text: Any) -> str | None:
    """Why `text` cannot be a repo id (None when it can)."""
    if not isinstance(text, str):
        return "not text"
    if len(text) > MAX_REPO_CHARS:
        return f"longer than the hub's {MAX_REPO_CHARS} characters"
    if not is_repo_id(text):
        return "not owner/name (letters, digits, _ . -, no `..` or `--`)"
    return None


def revision_problem(text: Any) -> str | None:
    """Why `text` cannot be a revision (a branch, a tag like `refs/pr/1`, or a commit id)."""
    if not isinstance(text, str) or not text:
        return "not a branch, tag or commit id"
    if len(text) > MAX_REVISION_CHARS:
        return f"longer than {MAX_REVISION_CHARS} characters"
    parts = text.split("/")
    if text.endswith(".lock") or not all(_REVISION_PART.match(p) for p in parts):
        return "not a branch, tag or commit id (letters, digits, _ . + = , @ - and / between parts)"
    return None


def is_commit(text: Any) -> bool:
    return isinstance(text, str) and bool(COMMIT_RE.match(text))


def is_sha256(text: Any) -> bool:
    return isinstance(text, str) and bool(SHA256_RE.match(text))


def path_problem(path: Any) -> str | None:
    """Why `path` cannot be a file's name inside a repo (None when it can).

    It becomes a link under `snapshots/<commit>/`, so it must stay there: relative, no `.` or
    `..` or empty parts, no backslashes or drive letters (a path on Windows), nothing that is
    not printable (NUL, newlines, terminal escapes, bidi overrides), and no part too long for a disk.
    """
    if not isinstance(path, str):
        return "not text"
    if not path:
        return "empty"
    if not path.isprintable():
        return "holds control or invisible characters"
    if "\\" in path:
        return "holds a backslash"
    if path.startswith("/"):
        return "an absolute path"
    parts = path.split("/")
    if len(parts) > MAX_PATH_PARTS:
        return f"more than {MAX_PATH_PARTS} folders deep"
    if re.match(r"^[A-Za-z]:", parts[0]):
        return "starts with a drive letter"
    for part in parts:
        if part in ("", ".", ".."):
            return "holds an empty, `.` or `..` part"
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            return f"has a name longer than {MAX_NAME_BYTES} bytes"
    return None


@dataclass(frozen=True)
class HubRef:
    """`owner/repo`, with what was asked for in it: a file, a quant type, or nothing."""

    repo: str
    selector: str | None = None

    def __str__(self) -> str:
        return f"{self.repo}:{self.selector}" if self.selector else self.repo


def parse_ref(text: str) -> HubRef | None:
    """`owner/repo`, `owner/repo:Q4_K_M` or `owner/repo:file.gguf`; None if it is not one.

    The selector is only ever compared with the names in the repo's listing, never used as a
    path; it still has to be printable, so that a message naming it stays one line.
    """
    if not isinstance(text, str):
        return None
    repo, _, selector = text.strip().partition(":")
    if not is_repo_id(repo):
        return None
    if selector and (len(selector) > MAX_SELECTOR_CHARS or not selector.isprintable()):
        return None
    return HubRef(repo, selector or None)


@dataclass
class RemoteFile:
    path: str
    size: int
    sha256: str | None = None  # the LFS SHA-256 the hub gives; None for small git files
    blob_id: str | None = None  # the git blob id (SHA-1) the hub gives; checks the small files


@dataclass
class GGUFModel:
    """One model in a repo: a single .gguf file or all the parts of a split one."""

    name: str  # the file's name without .gguf (and without the split suffix)
    parts: list[RemoteFile] = field(default_factory=list)
    quant: str | None = None

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)

    @property
    def first(self) -> RemoteFile:
        return self.parts[0]

    @property
    def complete(self) -> bool:
        """A single file, or every part of a split model, numbered 1 to N, each saying `of N`."""
        found = [SPLIT_RE.match(p.path.rsplit("/", 1)[-1]) for p in self.parts]
        if found[0] is None:
            return len(self.parts) == 1
        if any(m is None for m in found):
            return False
        counts = {int(m.group("count")) for m in found if m is not None}
        numbers = sorted(int(m.group("no")) for m in found if m is not None)
        return len(counts) == 1 and numbers == list(range(1, counts.pop() + 1))

    def label(self, repo: str, unique_quant: bool) -> str:
        """The name people use: `owner/repo:Q4_K_M`, or the file's name when the quant is ambiguous."""
        return f"{repo}:{self.quant}" if self.quant and unique_quant else f"{repo}:{self.name}"

    def matches(self, selector: str) -> bool:
        sel = selector.strip().lower().removesuffix(".gguf")
        names = {self.name.lower(), *(p.path.lower().removesuffix(".gguf") for p in self.parts)}
        names |= {n.rsplit("/", 1)[-1] for n in names}
        return sel in names or (self.quant is not None and sel == self.quant.lower())


def group_gguf(files: list[RemoteFile]) -> list[GGUFModel]:
    """The GGUF models among a repo's files, split parts together, in file order."""
    models: dict[str, GGUFModel] = {}
    for f in sorted(files, key=lambda f: f.path):
        if not f.path.lower().endswith(".gguf"):
            continue
        base = f.path.rsplit("/", 1)[-1]
        m = SPLIT_RE.match(base)
        folder = f.path[: -len(base)]
        stem = folder + (m.group("stem") if m else base[: -len(".gguf")])
        # `x.gguf` beside `x-00001-of-00002.gguf` is another model, not a part of it.
        key = f"{stem}\0split" if m else stem
        model = models.setdefault(key, GGUFModel(stem.rsplit("/", 1)[-1], quant=quant_of(stem)))
        model.parts.append(f)
    return list(models.values())


def unique_quants(models: list[GGUFModel]) -> set[str]:
    seen: dict[str, int] = {}
    for m in models:
        if m.quant:
            seen[m.quant] = seen.get(m.quant, 0) + 1
    return {q for q, n in seen.items() if n == 1}
