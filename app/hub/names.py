"""How models on the hub are named: `owner/repo[:file|:QUANT]`, quant types from file names,
and split GGUF files (`…-00001-of-00003.gguf`) grouped as one model."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SPLIT_RE = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
# The quant types llama.cpp writes into file names, longest first so Q4_K_M wins over Q4_K.
QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])("
    r"IQ[1-4]_(?:XXS|XS|NL|S|M)|IQ1_[SM]|Q[2-6]_K_(?:XL|L|M|S)|Q[2-8]_K|Q[4-8]_[01]|Q3_K_XL|TQ[12]_0|MXFP4"
    r"|BF16|F16|F32|FP16|FP32"
    r")(?![A-Za-z0-9])",
    re.IGNORECASE,
)
REPO_RE = re.compile(r"^[\w.-]+/[\w.-]+$")


def quant_of(filename: str) -> str | None:
    """The quant type a file's name says, upper-case (`q4_k_m` → `Q4_K_M`), or None."""
    matches = QUANT_RE.findall(filename.rsplit("/", 1)[-1])
    if not matches:
        return None
    q = matches[-1].upper()
    return {"FP16": "F16", "FP32": "F32"}.get(q, q)


def is_repo_id(text: str) -> bool:
    return bool(REPO_RE.match(text)) and not text.endswith(".gguf")


@dataclass(frozen=True)
class HubRef:
    """`owner/repo`, with what was asked for in it: a file, a quant type, or nothing."""

    repo: str
    selector: str | None = None

    def __str__(self) -> str:
        return f"{self.repo}:{self.selector}" if self.selector else self.repo


def parse_ref(text: str) -> HubRef | None:
    """`owner/repo`, `owner/repo:Q4_K_M` or `owner/repo:file.gguf`; None if it is not one."""
    repo, _, selector = text.strip().partition(":")
    if not is_repo_id(repo):
        return None
    return HubRef(repo, selector or None)


@dataclass
class RemoteFile:
    path: str
    size: int
    sha256: str | None = None  # the LFS SHA-256 the hub gives; None for small git files


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
        m = SPLIT_RE.match(self.first.path.rsplit("/", 1)[-1])
        return m is None or len(self.parts) == int(m.group("count"))

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
        model = models.setdefault(stem, GGUFModel(stem.rsplit("/", 1)[-1], quant=quant_of(stem)))
        model.parts.append(f)
    return list(models.values())


def unique_quants(models: list[GGUFModel]) -> set[str]:
    seen: dict[str, int] = {}
    for m in models:
        if m.quant:
            seen[m.quant] = seen.get(m.quant, 0) + 1
    return {q for q, n in seen.items() if n == 1}
