"""Lorebooks: reading all three kinds, and which entries a conversation switches on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cards.errors import CardError
from app.cards.lorebook import Lorebook, LoreEntry, activate, book_from_spec, read_lorebook
from app.cards.read import read_card
from tests.conftest import FIXTURES

SERAPHINA = FIXTURES / "cards" / "Seraphina.png"
ELDORIA = FIXTURES / "worldinfo" / "Eldoria.json"


def uids(books, messages, **kw) -> list[str]:
    return [a.entry.uid for a in activate(books, messages, **kw)]


def test_the_cards_own_book_and_a_world_info_file() -> None:
    book = book_from_spec(read_card(SERAPHINA).data["character_book"], "seraphina")
    assert book.name == "Eldoria" and len(book.entries) == 4
    world = read_lorebook(ELDORIA)
    assert world.name == "Eldoria" and {e.uid for e in world.entries} == {"0", "1", "2", "3"}
    assert world.entries[0].keys[:2] == ["eldoria", "wood"]
    assert uids([world], ["I wake in the FOREST."]) == ["0"]
    assert uids([world], ["Nothing relevant here."]) == []


def test_v3_lorebook_file(tmp_path: Path) -> None:
    path = tmp_path / "book.json"
    path.write_text(
        json.dumps(
            {
                "spec": "lorebook_v3",
                "data": {
                    "name": "B",
                    "scan_depth": 2,
                    "entries": [
                        {"id": 1, "keys": ["^dragon"], "use_regex": True, "content": "Dragons hoard."},
                        {"id": 2, "keys": ["x"], "content": "@@activate\nAlways."},
                        {"id": 3, "keys": ["castle"], "content": "@@dont_activate\nNever."},
                    ],
                },
            }
        )
    )
    book = read_lorebook(path)
    assert book.scan_depth == 2 and book.entries[1].force_on and book.entries[1].content == "Always."
    assert uids([book], ["dragon ahead", "castle"]) == ["1", "2"]
    assert uids([book], ["a dragon", "castle"]) == ["2"]  # the regex wants it at the start
    # Only the last two messages are scanned.
    assert uids([book], ["dragon", "one", "two"]) == ["2"]


def entry(uid: str, keys: list[str], **kw) -> LoreEntry:
    return LoreEntry(uid=uid, keys=keys, content=kw.pop("content", f"about {keys[0]}"), **kw)


def test_selective_logic_constant_disabled_and_case() -> None:
    book = Lorebook(
        "b",
        [
            entry("and_any", ["apple"], selective=True, secondary_keys=["red", "green"]),
            entry("and_all", ["apple"], selective=True, secondary_keys=["red", "ripe"], logic="and_all"),
            entry("not_any", ["apple"], selective=True, secondary_keys=["rotten"], logic="not_any"),
            entry("not_all", ["apple"], selective=True, secondary_keys=["red", "ripe"], logic="not_all"),
            entry("const", ["zzz"], constant=True),
            entry("off", ["apple"], enabled=False),
            entry("case", ["Apple"], case_sensitive=True),
        ],
    )
    assert uids([book], ["a red apple"]) == ["and_any", "not_any", "not_all", "const"]
    assert uids([book], ["a red ripe Apple"]) == ["and_any", "and_all", "not_any", "const", "case"]


def test_recursion_budget_and_order() -> None:
    book = Lorebook(
        "b",
        [
            entry("castle", ["castle"], content="The castle has a dragon.", insertion_order=5, priority=1),
            entry("dragon", ["dragon"], content="The dragon is old.", insertion_order=1, priority=9),
        ],
        recursive=True,
    )
    active = activate([book], ["We reach the castle."])
    assert [a.entry.uid for a in active] == ["dragon", "castle"]  # insertion order
    assert active[0].why.startswith("recursion")
    flat = Lorebook("b", book.entries, recursive=False)
    assert uids([flat], ["We reach the castle."]) == ["castle"]
    budget = Lorebook("b", book.entries, recursive=True, token_budget=6)
    assert uids([budget], ["We reach the castle."], count_tokens=lambda t: len(t.split())) == ["dragon"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("[]", "must be a JSON object"),
        ("{}", "not a lorebook"),
        ('{"entries": {"1": 5}}', "not an object"),
        ("{oops", "not valid JSON"),
    ],
)
def test_bad_lorebooks(content: str, fragment: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CardError) as exc:
        read_lorebook(path)
    assert str(exc.value).startswith(str(path)) and fragment in str(exc.value)


def test_lore_goes_into_the_prompt_where_the_placement_says(cattery_home: Path, tmp_path: Path) -> None:
    from tests.card_files import v3
    from tests.conftest import run_cattery

    card = v3(
        character_book={
            "name": "Woods",
            "entries": [
                {"id": 1, "keys": ["owl"], "content": "Owls guard the wood.", "enabled": True, "insertion_order": 1},
                {
                    "id": 2,
                    "keys": ["river"],
                    "content": "The river is cold.",
                    "enabled": True,
                    "position": "after_char",
                },
            ],
        }
    )
    path = tmp_path / "mira.json"
    path.write_text(json.dumps(card))
    history = tmp_path / "h.json"
    history.write_text(json.dumps([{"role": "user", "content": "I saw an owl by the river."}]))
    common = ["prompt", "--format", "chatml", "--card", str(path), "--history", str(history), "--json"]
    at_card = json.loads(run_cattery(*common, home=cattery_home).stdout)
    pinned = at_card["segments"][0]["text"]
    assert pinned.index("Owls guard the wood.") < pinned.index("A fox spirit.") < pinned.index("The river is cold.")
    assert [e["id"] for e in at_card["lore"]] == ["1", "2"] and at_card["lore"][0]["why"] == "key 'owl'"
    at_end = json.loads(run_cattery(*common, "--lore-placement", "end", home=cattery_home).stdout)
    assert "Owls" not in at_end["segments"][0]["text"]
    post = next(s for s in at_end["segments"] if s["kind"] == "post")["text"]
    assert post == "<|im_start|>system\nOwls guard the wood.\nThe river is cold.<|im_end|>\n"
    world = run_cattery(*common, "--lorebook", str(ELDORIA), home=cattery_home)
    assert world.returncode == 0 and len(json.loads(world.stdout)["lore"]) == 2  # nothing in Eldoria matches
