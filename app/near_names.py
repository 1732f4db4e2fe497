"""What to say about a name that names nothing: the known names it is closest to.

One rule for every kind of name a user types (prompt formats, quantization types, …),
so that a typo gets the same kind of help wherever it is made.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_LISTED = 30  # with no close match, the known names are listed, up to this many


def near(wanted: str, names: Sequence[str], n: int = 3) -> list[str]:
    """Up to `n` of `names` close to `wanted`, closest first; case is ignored (`ChatML` is near `chatml`)."""
    import difflib

    by_lower: dict[str, str] = {}
    for name in names:
        by_lower.setdefault(name.lower(), name)
    close = difflib.get_close_matches(wanted.strip().lower(), list(by_lower), n=n, cutoff=0.5)
    return [by_lower[c] for c in close]


def unknown(what: str, wanted: str, names: Sequence[str]) -> str:
    """`unknown prompt format 'chatmll' (did you mean chatml?)`, or the known names when none is close."""
    close = near(wanted, names)
    if close:
        options = close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}"
        return f"unknown {what} {wanted!r} (did you mean {options}?)"
    listed = ", ".join(names[:MAX_LISTED]) + (", …" if len(names) > MAX_LISTED else "")
    return f"unknown {what} {wanted!r} (one of {listed})"
