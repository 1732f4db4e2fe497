"""The character library through the command line: import, list, show, export, rm."""

from __future__ import annotations

import json
from pathlib import Path

from app.cards.read import read_card
from tests.card_files import b64json, png_with_chunks, text_chunk, v3
from tests.conftest import FIXTURES, run_cattery

SERAPHINA = FIXTURES / "cards" / "Seraphina.png"


def test_import_list_show_export_rm(cattery_home: Path, tmp_path: Path) -> None:
    mira = tmp_path / "mira.png"
    mira.write_bytes(png_with_chunks([text_chunk("ccv3", b64json(v3()))]))
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    r = run_cattery("cards", "import", str(SERAPHINA), str(broken), str(mira), home=cattery_home)
    assert r.returncode == 2  # one file failed; the others are in
    assert "imported Seraphina as seraphina" in r.stdout and "imported Mira as mira" in r.stdout
    assert (
        r.stderr.strip() == f"cattery: error: {broken}: the file is not valid JSON (Expecting property name "
        "enclosed in double quotes at line 1)"
    )
    listing = json.loads(run_cattery("cards", "list", "--json", home=cattery_home).stdout)
    assert [c["id"] for c in listing] == ["mira", "seraphina"]
    shown = json.loads(run_cattery("cards", "show", "MIRA", "--json", home=cattery_home).stdout)
    assert shown["spec"] == "chara_card_v3" and shown["data"]["nickname"] == "Mimi"
    # The avatar is kept byte for byte.
    assert (cattery_home / "data" / "cards" / "seraphina" / "avatar").read_bytes() == SERAPHINA.read_bytes()
    for fmt in ("png", "json", "charx"):
        out = tmp_path / f"out.{fmt}"
        assert (
            run_cattery("cards", "export", "seraphina", "--to", fmt, "-o", str(out), home=cattery_home).returncode == 0
        )
        assert read_card(out).comparable() == read_card(SERAPHINA).comparable()
    assert run_cattery("cards", "rm", "mira", home=cattery_home).returncode == 0
    gone = run_cattery("cards", "show", "mira", home=cattery_home)
    assert gone.returncode != 0 and "no such card" in gone.stderr
    assert not [p for p in (cattery_home / "data" / "cards").iterdir() if p.name.startswith(".")]


def test_show_reads_a_file_directly(cattery_home: Path) -> None:
    r = run_cattery("cards", "show", str(SERAPHINA), home=cattery_home)
    assert r.returncode == 0 and r.stdout.startswith("Seraphina  [chara_card_v2]") and "lorebook:" in r.stdout
