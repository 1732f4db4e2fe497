"""Sizes as people read them (decimal units, as the hub and disks show them)."""

from __future__ import annotations


def fmt_size(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "?"


def fmt_range(low: float | None, high: float | None) -> str:
    """`1.2 GB – 8.5 GB`, or one size when both ends are the same."""
    if not low:
        return "?"
    return fmt_size(low) if low == high else f"{fmt_size(low)} – {fmt_size(high)}"
