"""Reading every card format users have, and writing them back without losing anything."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.cards.errors import CardError
from app.cards.read import read_card, read_card_bytes
from app.cards.write import json_bytes, to_charx, to_png
from tests.card_files import (
    b64json,
    charx,
    huge_dimension_png,
    itxt_chunk,
    png_image,
    png_with_chunks,
    text_chunk,
    v2,
    v3,
    ztxt_chunk,
)
from tests.conftest import FIXTURES

SERAPHINA = FIXTURES / "cards" / "Seraphina.png"


def test_sillytavern_default_card() -> None:
    card = read_card(SERAPHINA)
    assert card.spec == "chara_card_v2" and card.name == "Seraphina"
    assert card.data["first_mes"].startswith("*You wake with a start")
    assert card.data["character_book"]["entries"]
    # SillyTavern's own top-level keys are kept; the V1 mirrors are rebuilt from the data.
    assert {"talkativeness", "fav", "chat", "create_date"} <= set(card.top)
    assert "first_mes" not in card.top
    assert card.avatar == SERAPHINA.read_bytes()


def test_ccv3_wins_over_chara_and_keywords_ignore_case() -> None:
    data = png_with_chunks([text_chunk("Chara", b64json(v2("Old"))), text_chunk("CCV3", b64json(v3("New")))])
    card = read_card_bytes(data, "both.png")
    assert card.name == "New" and card.spec == "chara_card_v3" and card.data["nickname"] == "Mimi"


@pytest.mark.parametrize(
    "maker",
    [ztxt_chunk, itxt_chunk, lambda k, t: itxt_chunk(k, t, compressed=True)],
    ids=["zTXt", "iTXt", "iTXt-compressed"],
)
def test_compressed_and_international_text_chunks(maker) -> None:
    card = read_card_bytes(png_with_chunks([maker("chara", b64json(v2()))]), "z.png")
    assert card.name == "Mira"


def test_other_text_chunks_are_ignored() -> None:
    extra = [text_chunk("parameters", b"masterpiece, best quality, (fox girl:1.2)"), text_chunk("chara", b64json(v2()))]
    assert read_card_bytes(png_with_chunks(extra), "sd.png").name == "Mira"


def test_v1_pygmalion_and_yaml() -> None:
    v1 = {
        "name": "Old",
        "description": "d",
        "personality": "p",
        "scenario": "s",
        "first_mes": "hi",
        "mes_example": "",
        "talkativeness": "0.5",
    }
    card = read_card_bytes(json.dumps(v1).encode(), "v1.json")
    assert card.spec == "v1" and card.data["first_mes"] == "hi" and card.top == {"talkativeness": "0.5"}
    pyg = {
        "char_name": "Pyg",
        "char_persona": "persona",
        "char_greeting": "Hey",
        "world_scenario": "w",
        "example_dialogue": "ex",
    }
    card = read_card_bytes(json.dumps(pyg).encode(), "pyg.json")
    assert (card.spec, card.name, card.data["description"], card.data["first_mes"], card.data["scenario"]) == (
        "pygmalion",
        "Pyg",
        "persona",
        "Hey",
        "w",
    )
    yaml_text = b"name: Tess\ncontext: A librarian.\ngreeting: Quiet, please.\nyour_name: Reader\n"
    card = read_card_bytes(yaml_text, "tess.yaml", ".yaml")
    assert (card.spec, card.name, card.data["description"], card.data["first_mes"]) == (
        "tgwui",
        "Tess",
        "A librarian.",
        "Quiet, please.",
    )
    assert card.data["extensions"]["text-generation-webui"] == {"your_name": "Reader"}


@pytest.mark.parametrize("prefix", ["embeded://", "embedded://"])
def test_charx_with_embedded_avatar(prefix: str) -> None:
    avatar = png_image(16, 16)
    data = charx(v3(), {"assets/icon/images/main.png": avatar, "assets/emotion/happy.png": avatar}, prefix)
    card = read_card_bytes(data, "mira.charx")
    assert card.avatar == avatar and "assets/emotion/happy.png" in card.files


def test_unknown_keys_and_extensions_survive(tmp_path: Path) -> None:
    raw = v3(extensions={"chub": {"id": 7}, "world": "w"}, custom_field={"anything": [1, 2]})
    raw["top_level_extra"] = "kept"
    card = read_card_bytes(json.dumps(raw).encode(), "x.json")
    again = read_card_bytes(to_png(card), "x.png")
    assert again.data["custom_field"] == {"anything": [1, 2]}
    assert again.data["extensions"] == {"chub": {"id": 7}, "world": "w"}
    assert read_card_bytes(json_bytes(card.to_v2()), "x.json").top["top_level_extra"] == "kept"


SOURCES = {
    "png-v2": lambda: png_with_chunks([text_chunk("chara", b64json(v2()))]),
    "png-v3": lambda: png_with_chunks([text_chunk("ccv3", b64json(v3()))]),
    "json-v1": lambda: json.dumps({"name": "Old", "description": "d", "first_mes": "hi"}).encode(),
    "json-v2": lambda: json.dumps(v2()).encode(),
    "json-v3": lambda: json.dumps(v3()).encode(),
    "pygmalion": lambda: json.dumps({"char_name": "P", "char_persona": "x", "char_greeting": "hi"}).encode(),
    "charx": lambda: charx(v3(), {"assets/icon/images/main.png": png_image()}),
    "yaml": lambda: b"name: Tess\ncontext: A librarian.\ngreeting: Quiet.\n",
    "seraphina": lambda: SERAPHINA.read_bytes(),
}
WRITERS = {
    "png": to_png,
    "charx": to_charx,
    "json-v3": lambda c: json_bytes(c.to_v3()),
    "json-v2": lambda c: json_bytes(c.to_v2()),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_import_export_import_gives_an_equal_card(source: str, writer: str) -> None:
    first = read_card_bytes(SOURCES[source](), f"in.{source}", ".yaml" if source == "yaml" else "")
    again = read_card_bytes(WRITERS[writer](first), f"out.{writer}")
    if writer == "json-v2":  # V2 has no place for V3's own fields; everything else comes back
        v3_only = ("nickname", "creator_notes_multilingual", "source", "creation_date", "modification_date")
        expected = {k: v for k, v in first.comparable().items() if k not in v3_only}
        expected["group_only_greetings"] = []
        assert again.comparable() == expected
    else:
        assert again.comparable() == first.comparable()
    if writer == "png":
        assert again.avatar is not None and (
            first.avatar is None
            or not first.avatar.startswith(b"\x89PNG")
            or again.avatar.startswith(first.avatar[:16])
        )


def test_png_export_writes_a_real_v3_and_a_v2(tmp_path: Path) -> None:
    from app.cards.png_chunks import iter_chunks, text_chunks

    card = read_card_bytes(json.dumps(v3()).encode(), "x.json")
    texts = text_chunks(iter_chunks(to_png(card), "x"), "x")
    import base64

    chara = json.loads(base64.b64decode(texts["chara"]))
    ccv3 = json.loads(base64.b64decode(texts["ccv3"]))
    assert chara["spec"] == "chara_card_v2" and "nickname" not in chara["data"] and chara["name"] == "Mira"
    assert ccv3["spec"] == "chara_card_v3" and ccv3["data"]["nickname"] == "Mimi"
    assert ccv3["data"]["group_only_greetings"] == ["Hi all"]


def zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("card.json", json.dumps(v3()))
        zf.writestr("assets/bomb.bin", b"\0" * (50 * 1024 * 1024))
    return buf.getvalue()


def traversal() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("card.json", json.dumps(v3()))
        zf.writestr("../../etc/evil", b"x")
    return buf.getvalue()


BAD = {
    "truncated png": (lambda: SERAPHINA.read_bytes()[:200_000], "truncated"),
    "bad base64": (lambda: png_with_chunks([text_chunk("chara", b"!!!not base64!!!")]), "not valid base64"),
    "invalid json": (lambda: png_with_chunks([text_chunk("chara", b"eyJuYW1lIjo=")]), "not valid JSON"),
    "invalid yaml": (lambda: b"name: [unclosed\n", "not valid YAML"),
    "missing name": (lambda: json.dumps(v2(name="")).encode(), "no name"),
    "wrong type": (lambda: json.dumps(v2(tags="fox")).encode(), "'tags' must be a list"),
    "wrong type 2": (lambda: json.dumps(v2(description=["a"])).encode(), "'description' must be text"),
    "zip bomb": (zip_bomb, "zip bomb"),
    "path traversal": (traversal, "outside the card"),
    "enormous png": (
        lambda: png_with_chunks([text_chunk("chara", b64json(v2()))], huge_dimension_png(100_000, 100_000)),
        "larger than",
    ),
    "no card in png": (png_image, "without a character card"),
    "lorebook": (lambda: json.dumps({"entries": {"0": {"key": ["x"]}}}).encode(), "lorebook"),
    "not a card": (lambda: b"\x00\x01binary", "not a character card"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_broken_cards_get_one_clear_line(case: str, tmp_path: Path) -> None:
    make, fragment = BAD[case]
    path = tmp_path / "broken.card"
    path.write_bytes(make())
    with pytest.raises(CardError) as exc:
        read_card(path)
    message = str(exc.value)
    assert message.startswith(str(path)) and fragment in message and "\n" not in message


def test_missing_file() -> None:
    with pytest.raises(CardError, match="file not found"):
        read_card(Path("/nowhere/card.png"))


VALID = [SOURCES["png-v2"](), SOURCES["json-v3"](), SOURCES["charx"](), SOURCES["yaml"]()]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(VALID))), st.data())
def test_mutated_cards_raise_only_card_errors(which: int, data: st.DataObject) -> None:
    original = bytearray(VALID[which])
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(original) - 1)))
        if kind == "flip" and original:
            original[pos] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del original[pos : pos + data.draw(st.integers(1, 64))]
        else:
            original[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    try:
        read_card_bytes(bytes(original), "fuzzed.card")
    except CardError as exc:
        assert str(exc).startswith("fuzzed.card: ")
