"""The house's walls: which package may import which.

Read from the source with `ast` (every import, including those inside functions that
defer a heavy module), so a lazy import cannot hide an arrow running the wrong way.
Imports under `if TYPE_CHECKING:` are only type hints and are allowed anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

# The core knows nothing of the layers above it: the line chat, the command line, the
# app's screens and the chat session all stand on it, never the other way round.
CORE = ("app.engine", "app.prompt", "app.cards", "app.chats", "app.hub", "converters")
ABOVE_CORE = ("app.cli", "app.session", "app.tui", "app.plain_chat")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
            if name == "TYPE_CHECKING":
                for child in node.body:
                    for sub in ast.walk(child):
                        if hasattr(sub, "lineno"):
                            lines.add(sub.lineno)
    return lines


def imports(path: Path, me: str | None = None) -> list[tuple[str, int]]:
    """Every module `path` (the module `me`) imports at run time, with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    hints = _type_checking_lines(tree)
    me = me or _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in hints:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, node.lineno))
            out += [(f"{mod}.{a.name}", node.lineno) for a in node.names]  # `from app import cli`
    return out


def _sources(*packages: str) -> list[Path]:
    files: list[Path] = []
    for pkg in packages:
        files += sorted((ROOT / pkg.replace(".", "/")).rglob("*.py"))
    return files


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_core_imports_nothing_above_it() -> None:
    wrong = [
        f"{_module_name(f)}:{line} imports {mod}"
        for f in _sources(*CORE)
        for mod, line in imports(f)
        if _under(mod, ABOVE_CORE)
    ]
    assert not wrong, "\n".join(wrong)


def test_converters_do_not_reach_up_into_the_command_line_or_the_session() -> None:
    wrong = [
        f"{_module_name(f)}:{line} imports {mod}"
        for f in _sources("converters")
        for mod, line in imports(f)
        if mod.startswith("app.cli") or _under(mod, ("app.session", "app.tui"))
    ]
    assert not wrong, "\n".join(wrong)


def test_screens_and_widgets_do_not_import_the_app_except_for_type_hints() -> None:
    wrong = [
        f"{_module_name(f)}:{line} imports {mod}"
        for f in _sources("app.tui.screens", "app.tui.widgets")
        for mod, line in imports(f)
        if _under(mod, ("app.tui.app",))
    ]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_lazy_imports_and_skips_type_hints(tmp_path: Path) -> None:
    """The rule above is only as good as the reader: a deferred import counts, a hint does not."""
    f = tmp_path / "probe.py"
    f.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from app.tui.app import CatteryApp\n"
        "def later():\n    from app.session import chat\n    from . import cli\n"
    )
    found = {m for m, _ in imports(f, "app.probe")}
    assert "app.session" in found and "app.cli" in found
    assert "app.tui.app" not in found
