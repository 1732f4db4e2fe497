"""The worst cases of the shared parsers (app/untrusted.py), for bench/hostile.py and the tests."""

from __future__ import annotations

from collections.abc import Callable

from app.untrusted import parse_json, parse_toml, parse_yaml


def alias_bomb(levels: int = 9) -> str:
    """The "billion laughs" in YAML: ~300 bytes that expand to 9**9 strings."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghijklmnopqrstuvwxyz"
    for i in range(1, levels):
        lines.append(f"{names[i]}: &{names[i]} [{','.join(['*' + names[i - 1]] * 9)}]")
    return "\n".join(lines)


def _deep_json() -> object:
    return parse_json("[" * 200_000 + "]" * 200_000, "deep.json")


def _deep_toml() -> object:
    return parse_toml("a = " + "[" * 100_000 + "]" * 100_000, "deep.toml")


def _yaml_bomb() -> object:
    return parse_yaml(alias_bomb(), "bomb.yaml")


def _deep_yaml() -> object:
    return parse_yaml("[" * 50_000 + "]" * 50_000, "deep.yaml")


WORST_CASES: list[tuple[str, Callable[[], object]]] = [
    ("JSON nested 200,000 deep", _deep_json),
    ("TOML array nested 100,000 deep", _deep_toml),
    ("YAML alias bomb (9 levels, ~300 bytes)", _yaml_bomb),
    ("YAML nested 50,000 deep", _deep_yaml),
]
