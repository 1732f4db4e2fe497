"""The core's messages as the app says them.

The engine, the converters and the prompt builder write their errors for the command
line ("use a larger --ctx", "or pass --force"), where they are right. The app has no
flags: it has controls on its screens. Every error and warning line it shows goes
through `in_app`, which names the app's own control instead (the phrases are data, in
`assets/app_words.toml`), so the core stays free of UI words and a flag added to a core
message later has one place to be given its app name.
"""

from __future__ import annotations

import re
import sys
from functools import cache
from pathlib import Path

from app.assets import asset_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


@cache
def _rules() -> dict[str, tuple[tuple[re.Pattern[str], str], ...]]:
    with asset_path("app_words.toml").open("rb") as f:
        data = tomllib.load(f)
    return {
        where: tuple((re.compile(pattern), str(words)) for pattern, words in table.items())
        for where, table in data.items()
    }


def in_app(text: str, where: str = "app") -> str:
    """`text` with each command-line flag it names replaced by the app's control for it.

    `where` is "build" while the Workshop runs a recipe: there the recipe, not a control,
    sets what a flag would (its importance matrix, its pre-tokenizer).
    """
    if "--" not in text:
        return text
    rules = _rules()
    for table in (where, "app") if where != "app" else ("app",):
        for pattern, words in rules.get(table, ()):
            text = pattern.sub(words, text)
    return text


def about_file(path: Path | None, message: str) -> str:
    """One line about a model file: its name first, said once.

    A loader's message usually starts with the file's path already
    ("/models/x.gguf: not a GGUF file"); the name is put in front only when it is not there.
    """
    if path is None or str(path) in message:
        return message
    if re.search(rf"(?<![\w.-]){re.escape(path.name)}(?![\w.-])", message):
        return message
    return f"{path.name}: {message}"
