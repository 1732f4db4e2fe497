"""Cards and lorebooks from strangers (issue 13): every hostile file is accepted or refused in
one line, within 5 s and 256 MB, and nothing is written outside the cards folder.

Each case runs through tests.hostile.bounds (a forked child under the time and memory bounds),
on the real readers, the real library on disk, the real prompt pieces (macros, examples,
lorebook activation) and the real writers. The hypothesis tests start from real valid
files of each format and mutate them; whatever a mutation makes must be refused as a
`CardError` or, when accepted, go on to build a prompt, enter the library and export.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.cards.card import Card
from app.cards.errors import (
    MAX_CARD_FILE,
    MAX_CHARX_TOTAL,
    MAX_JSON_TEXT,
    MAX_LIST_ITEMS,
    MAX_NAME,
    MAX_TEXT_FIELD,
    MAX_YAML_TEXT,
    CardError,
)
from app.cards.examples import parse_examples
from app.cards.library import SLUG_BYTES, CardLibrary, load_card, slug
from app.cards.lorebook import (
    MAX_ORDER,
    MAX_SCAN_DEPTH,
    SCAN_SECONDS,
    Lorebook,
    LoreEntry,
    activate,
    book_from_spec,
    read_lorebook,
)
from app.cards.macros import MAX_GROWTH, MacroContext, expand
from app.cards.prompting import LoreSession, Persona, card_prompt
from app.cards.read import read_card, read_card_bytes
from app.cards.write import json_bytes, to_charx, to_png
from app.errors import CatteryError
from app.prompt.segments import Message
from app.prompt.st_import import import_st_preset
from tests.conftest import FIXTURES, run_cattery
from tests.hostile.bounds import assert_bounded, assert_one_line_failure, assert_refused, run_bounded
from tests.hostile.cases_cards import (
    WORST_CASES,
    YAML_ALIAS_BOMB,
    book_card,
    card_v2,
    central_directory_flood,
    charx,
    chunk,
    deep_json_card,
    png_card,
    symlink_entry,
    tiny_png,
    with_chunks,
    zip_bytes,
)

SERAPHINA = FIXTURES / "cards" / "Seraphina.png"
ELDORIA = FIXTURES / "worldinfo" / "Eldoria.json"
PRESETS = FIXTURES / "st-presets" / "instruct"


# -- helpers -------------------------------------------------------------------------------


def use(card: Card, folder: Path) -> int:
    """Everything a user does with an accepted card: a prompt with its lorebook over a chat,
    an import into the library, a reload, and the three exports read back."""
    cp = card_prompt(card, global_system="Be kind.", persona=Persona("Anon", "A traveller."))
    books = [book_from_spec(card.data["character_book"], card.name)] if card.data.get("character_book") else []
    lore = LoreSession(cp, books)
    pinned, _ = lore([Message("user", "hello there, forest and owl"), Message("assistant", "hi")])
    library = CardLibrary(folder / "cards")
    entry = library.add(card, "test")
    again = entry.load()
    for data in (to_png(again), to_charx(again), json_bytes(again.to_v3())):
        read_card_bytes(data, "exported")
    library.remove(entry.slug)
    return len(pinned)


class AcceptedThenFailed(AssertionError):
    """A card that imported and then failed: the class of bug where every prompt crashes."""


def read_and_use(data: bytes, name: str, folder: Path) -> int:
    path = folder / name
    path.write_bytes(data)
    card = read_card(path)  # a refusal here is the right answer to a broken file
    try:
        return use(card, folder)
    except CatteryError as exc:
        raise AcceptedThenFailed(f"{name} was accepted, then: {exc}") from None


def refused(data: bytes, name: str, folder: Path, match: str) -> None:
    path = folder / name
    path.write_bytes(data)
    assert_refused(read_card, path, match=match, what=name)
    out = run_bounded(lambda: CardLibrary(folder / "cards").add(read_card(path)))
    assert out.kind == "refused" and out.detail.startswith(str(path)), out


def no_leftovers(folder: Path) -> None:
    """Nothing half-imported: no temporary folders beside the cards."""
    cards = folder / "cards"
    if cards.is_dir():
        assert not [p.name for p in cards.iterdir() if p.name.startswith(".")]


def zip_patch(data: bytes, name: str, **fields: int) -> bytes:
    """`data` with the central directory record of `name` changed (flag_bits, compress_type,
    file_size): what a hostile tool can write, and Python's zipfile cannot."""
    offsets = {
        "flag_bits": (8, "<H"),
        "compress_type": (10, "<H"),
        "compress_size": (20, "<L"),
        "file_size": (24, "<L"),
    }
    out = bytearray(data)
    pos = out.rfind(b"PK\x01\x02")
    while pos >= 0:
        (length,) = struct.unpack("<H", out[pos + 28 : pos + 30])
        if out[pos + 46 : pos + 46 + length].decode() == name:
            for key, value in fields.items():
                offset, fmt = offsets[key]
                struct.pack_into(fmt, out, pos + offset, value)
            return bytes(out)
        pos = out.rfind(b"PK\x01\x02", 0, pos)
    raise AssertionError(name)


def jpeg(width: int = 32, height: int = 24) -> bytes:
    import random

    from PIL import Image

    pixels = random.Random(width * height).randbytes(width * height * 3)  # noise: JPEG keeps it long
    buf = io.BytesIO()
    Image.frombytes("RGB", (width, height), pixels).save(buf, "JPEG")
    return buf.getvalue()


# -- the worst cases, as bench/hostile.py runs them ----------------------------------------

EXPECTED = {
    "card JSON nested 900 deep": "refused",
    "lorebook insertion_order: Infinity": "refused",
    "CharX assets/a and assets/a/b": "refused",
    "CharX symlink entry": "refused",
    "CharX icon that is not an image": "refused",
    "CharX central directory of 90,000 entries": "refused",
    "CharX claiming 65,535 entries": "refused",
    "CharX zip bomb (20 MB of zeros)": "refused",
    "YAML alias bomb (317 bytes)": "refused",
    "random bytes named .png": "refused",
    "PNG of 100,001 chunks": "refused",
    "PNG chara zTXt inflating past 16 MiB": "refused",
    "PNG claiming 100,000 x 100,000 pixels": "refused",
    "card JSON of 8,000,000 numbers": "refused",
}


@pytest.mark.parametrize("name", [name for name, _ in WORST_CASES])
def test_worst_cases_are_bounded(name: str) -> None:
    case = dict(WORST_CASES)[name]
    out = assert_bounded(case, what=name)
    assert out.kind == EXPECTED.get(name, "ok"), f"{name}: {out}"


# -- JSON: depth, numbers, types, sizes -----------------------------------------------------


@pytest.mark.parametrize("depth", [65, 500, 900, 5000, 100_000])
def test_deep_json_everywhere(depth: int, tmp_path: Path) -> None:
    card = deep_json_card(depth)
    refused(card, "deep.json", tmp_path, "nested")
    refused(png_card(card), "deep.png", tmp_path, "nested")
    refused(zip_bytes([("card.json", card)]), "deep.charx", tmp_path, "nested")
    book = tmp_path / "book.json"
    book.write_bytes(b'{"entries":[{"keys":["a"],"content":"x","extensions":' + b"[" * depth + b"]" * depth + b"}]}")
    assert_refused(read_lorebook, book, match="nested")
    assert_refused(import_st_preset, book, tmp_path / "formats", match="nested")
    no_leftovers(tmp_path)


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e400", "-1e999"])
@pytest.mark.parametrize("field", ["insertion_order", "priority"])
def test_non_finite_numbers_are_refused_at_import(field: str, value: str, tmp_path: Path) -> None:
    entry = '{"keys":["a"],"content":"x","' + field + '":' + value + "}"
    refused(book_card(entry), "lore.json", tmp_path, "")
    book = tmp_path / "book.json"
    book.write_text('{"entries":[' + entry + "]}")
    assert_refused(read_lorebook, book)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("insertion_order", 10**4000),
        ("insertion_order", -1e308),
        ("priority", 1e308),
        ("priority", "12"),
        ("priority", True),
        ("priority", None),
    ],
)
def test_out_of_range_numbers_are_clamped_and_every_prompt_builds(field: str, value: Any, tmp_path: Path) -> None:
    entry = {"keys": ["forest"], "content": "The forest.", field: value}
    text = json.dumps(card_v2(character_book={"entries": [entry], "scan_depth": -5, "token_budget": -1}))
    card = read_card_bytes(text.encode(), "x.json")
    book = book_from_spec(card.data["character_book"], "x")
    got = getattr(book.entries[0], field)
    assert isinstance(got, int) and -MAX_ORDER <= got <= MAX_ORDER
    assert book.scan_depth is None and book.token_budget is None
    assert_bounded(read_and_use, text.encode(), "x.json", tmp_path)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"name": {"first": "Mira"}}, "'name' must be text"),
        ({"description": ["a", "list"]}, "'description' must be text"),
        ({"tags": "fox"}, "'tags' must be a list"),
        ({"tags": [1, 2]}, "'tags' must be a list"),
        ({"alternate_greetings": [None]}, "must be a list of text"),
        ({"extensions": []}, "'extensions' must be an object"),
        ({"assets": {"a": 1}}, "'assets' must be a list"),
        ({"assets": [{"uri": ["x"]}]}, "asset's 'uri' must be text"),
        ({"nickname": 7}, "'nickname' must be text"),
        ({"character_book": {"entries": {"0": {}}}}, "character_book"),
        ({"character_book": {"entries": [{"keys": 5, "content": "x"}]}}, "keys must be a list of text"),
        ({"character_book": {"entries": [{"keys": [["a"]], "content": "x"}]}}, "keys must be a list of text"),
        ({"character_book": {"entries": [{"keys": ["a"], "content": ["x"]}]}}, "content must be text"),
        ({"character_book": {"entries": [{"keys": ["a"], "content": "x", "name": {"n": 1}}]}}, "name must be text"),
        ({"character_book": {"entries": [{"keys": ["a"], "content": "x", "id": {"i": 1}}]}}, "id must be"),
        ({"character_book": {"entries": [{"keys": ["a"], "content": "x", "priority": [1]}]}}, "must be a number"),
        ({"character_book": {"entries": [{"keys": ["a"], "content": "x", "priority": "lots"}]}}, "must be a number"),
        ({"character_book": {"name": {"x": 1}, "entries": []}}, "name must be text"),
        ({"character_book": {"entries": [], "scan_depth": "deep"}}, "scan_depth must be a number"),
        ({"character_book": {"entries": [7]}}, "entry 0 is not an object"),
    ],
)
def test_wrong_types_are_refused_at_import_in_one_line(data: dict[str, Any], match: str, tmp_path: Path) -> None:
    raw = card_v2()
    raw["data"].update(data)
    refused(json.dumps(raw).encode(), "typed.json", tmp_path, match)


@pytest.mark.parametrize(
    ("field", "size", "match"),
    [
        ("description", MAX_TEXT_FIELD + 1, "'description' is"),
        ("name", MAX_NAME + 1, "'name' is"),
        ("first_mes", MAX_TEXT_FIELD + 1, "'first_mes' is"),
    ],
)
def test_oversized_text_is_refused(field: str, size: int, match: str, tmp_path: Path) -> None:
    refused(json.dumps(card_v2(**{field: "x" * size})).encode(), "big.json", tmp_path, match)
    refused(json.dumps(card_v2(tags=["t"] * (MAX_LIST_ITEMS + 1))).encode(), "tags.json", tmp_path, "items")


def test_a_500_mb_description_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with path.open("wb") as f:  # sparse: the size is claimed, not written
        f.write(b'{"name":"Huge","description":"')
        f.truncate(500 * 1024 * 1024)
    assert_refused(read_card, path, match=f"larger than the {MAX_CARD_FILE // 2**20} MiB")
    assert_refused(read_lorebook, path, match="16 MiB a lorebook may be")


def test_special_files_are_refused_not_read(tmp_path: Path) -> None:
    assert_refused(read_card, Path("/dev/zero"), match="not a regular file")
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)  # nobody writes to it: opening it for reading the usual way waits forever
    assert_refused(read_card, fifo, match="not a regular file")
    assert_refused(read_lorebook, fifo, match="not a regular file")
    assert_refused(read_card, tmp_path, match="folder")
    assert_refused(read_lorebook, Path("/dev/zero"), match="not a regular file")


def test_lone_surrogates_are_mended_so_the_card_can_be_saved(tmp_path: Path) -> None:
    text = b'{"spec":"chara_card_v2","data":{"name":"Half \\ud83d emoji","description":"\\udc00"}}'
    card = read_card_bytes(text, "s.json")
    assert card.name == "Half \ufffd emoji"
    assert assert_bounded(read_and_use, text, "s.json", tmp_path).kind == "ok"


# -- names become folders safely ------------------------------------------------------------

NAMES = [
    "N" * 300,
    "猫" * 300,
    "é" * 200,
    ".",
    "..",
    "../../../etc",
    "/etc/passwd",
    "..\\..\\windows",
    "con",
    "NUL",
    "lpt1",
    "\x1b[31mred\x07",
    "\u202eevil",
    "-_-",
    "a/b",
    "C:\\x",
]


@pytest.mark.parametrize("name", NAMES, ids=range(len(NAMES)))
def test_a_cards_name_never_becomes_a_path(name: str, tmp_path: Path) -> None:
    library = CardLibrary(tmp_path / "cards")
    first = library.add(read_card_bytes(json.dumps(card_v2(name)).encode(), "n.json"), "n.json")
    second = library.add(read_card_bytes(json.dumps(card_v2(name)).encode(), "n.json"), "n.json")
    for entry in (first, second):
        assert entry.folder.parent == library.root and entry.folder.is_dir()
        assert 0 < len(entry.slug.encode()) <= SLUG_BYTES + 4 and "/" not in entry.slug and "\\" not in entry.slug
        assert entry.slug.split("-")[0] not in ("con", "nul", "lpt1", ".", "..") or "-card" in entry.slug
        assert entry.load().name == name  # the name itself is kept as written
    assert first.slug != second.slug
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cards"]
    assert library.find(name).slug == first.slug
    library.remove(first.slug)
    library.remove(second.slug)
    assert list(library.root.iterdir()) == []


def test_slug_caps_characters_and_bytes() -> None:
    assert slug("") == "card" and slug("   ") == "card" and slug("!!!") == "card"
    assert len(slug("x" * 10_000)) <= 48
    assert len(slug("😺" * 1000).encode()) <= SLUG_BYTES


# -- CharX ----------------------------------------------------------------------------------

CHARX_CASES = {
    "file then folder": ([("assets/a", b"1"), ("assets/a/b", b"2")], "inside a file"),
    "folder then file": ([("assets/a/b", b"2"), ("assets/a", b"1")], "both a file and a folder"),
    "folder entry then file": ([("assets/a/", b""), ("assets/a", b"1")], "both a file and a folder"),
    "duplicate": ([("assets/x.png", b"1"), ("assets/x.png", b"2")], "twice"),
    "duplicate by case": ([("assets/X.png", b"1"), ("assets/x.png", b"2")], "twice"),
    "duplicate by normalisation": ([("assets/e\u0301.png", b"1"), ("assets/\u00e9.png", b"2")], "twice"),
    "duplicate card.json": ([("card.json", b"{}")], "twice"),
    "absolute": ([("/etc/cron.d/x", b"1")], "absolute"),
    "parent": ([("../x", b"1")], "'..'"),
    "parent inside": ([("assets/../../x", b"1")], "'..'"),
    "dot": ([("assets/./x", b"1")], "'.'"),
    "backslash": ([("..\\..\\x", b"1")], "backslash"),
    "drive": ([("C:/x", b"1")], "colon"),
    "control": ([("assets/\x1bx", b"1")], "control"),
    "reserved": ([("assets/con.png", b"1")], "Windows reserves"),
    "trailing dot": ([("assets/x.", b"1")], "Windows reserves"),
    "long part": ([("assets/" + "x" * 300, b"1")], "longer than"),
    "long path": ([("a/" * 600 + "x", b"1")], "overlong"),
}


@pytest.mark.parametrize("case", sorted(CHARX_CASES))
def test_charx_entries_that_cannot_be_files_are_refused(case: str, tmp_path: Path) -> None:
    entries, match = CHARX_CASES[case]
    data = zip_bytes([("card.json", json.dumps(card_v2()).encode()), *entries])
    refused(data, "x.charx", tmp_path, match)
    no_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.charx"]


def test_charx_links_devices_encryption_and_compressions_are_refused(tmp_path: Path) -> None:
    card = ("card.json", json.dumps(card_v2()).encode())
    refused(zip_bytes([card, symlink_entry("assets/link", b"/etc/passwd")]), "l.charx", tmp_path, "link")
    fifo = zipfile.ZipInfo("assets/fifo")
    fifo.create_system, fifo.external_attr = 3, (0o010644 << 16)
    refused(zip_bytes([card, (fifo, b"")]), "f.charx", tmp_path, "device")
    plain = zip_bytes([card, ("assets/x.bin", b"x" * 100)])
    refused(zip_patch(plain, "assets/x.bin", flag_bits=1), "e.charx", tmp_path, "encrypted")
    refused(zip_bytes([card, ("assets/x.bin", b"x" * 100)], zipfile.ZIP_BZIP2), "b.charx", tmp_path, "compression")
    huge = zip_patch(plain, "assets/x.bin", file_size=MAX_CHARX_TOTAL + 1, compress_size=MAX_CHARX_TOTAL + 1)
    refused(huge, "t.charx", tmp_path, "unpacks to more than")
    bomb = zip_patch(plain, "assets/x.bin", file_size=MAX_CHARX_TOTAL - 1)
    refused(bomb, "z.charx", tmp_path, "zip bomb")


def test_charx_central_directory_bombs_are_refused_before_listing(tmp_path: Path) -> None:
    refused(central_directory_flood(100_000, 1), "flood.charx", tmp_path, "directory")
    refused(central_directory_flood(80_000, 1), "many.charx", tmp_path, "entries")
    refused(central_directory_flood(10, 65_535), "count.charx", tmp_path, "entries")
    refused(b"PK\x03\x04" + bytes(100), "cut.charx", tmp_path, "not a CharX")


def test_charx_icon_must_be_an_image_of_bounded_size(tmp_path: Path) -> None:
    from PIL import Image

    refused(charx(card_v2(), {"assets/i.png": b"text"}, icon="assets/i.png"), "t.charx", tmp_path, "not an image")
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "GIF")
    gif = bytearray(buf.getvalue())
    gif[6:10] = b"\xff\xff\xff\xff"  # a 65535 × 65535 screen
    refused(charx(card_v2(), {"i.gif": bytes(gif)}, icon="i.gif"), "g.charx", tmp_path, "larger than")
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "TIFF")
    refused(charx(card_v2(), {"i.tif": buf.getvalue()}, icon="i.tif"), "f.charx", tmp_path, "not an image")
    # A JPEG icon is taken, and exported as a PNG card.
    card = read_card_bytes(charx(card_v2(), {"assets/i.jpg": jpeg()}, icon="assets/i.jpg"), "j.charx")
    assert read_card_bytes(to_png(card), "out.png").avatar.startswith(b"\x89PNG")
    assert assert_bounded(read_and_use, charx(card_v2(), {"i.jpg": jpeg()}, icon="i.jpg"), "j.charx", tmp_path)


def test_export_of_a_damaged_library_avatar_is_one_line(tmp_path: Path) -> None:
    library = CardLibrary(tmp_path / "cards")
    entry = library.add(read_card_bytes(charx(card_v2(), {"i.jpg": jpeg()}, icon="i.jpg"), "j.charx"), "j")
    (entry.folder / "avatar").write_bytes(b"\xff\xd8 not really a jpeg")
    assert_refused(to_png, entry.load(), match="not an image")
    cut = jpeg(256, 256)
    (entry.folder / "avatar").write_bytes(cut[: len(cut) // 2])  # its header, then half the data
    assert_refused(to_png, entry.load(), match="cannot be decoded")
    (entry.folder / "avatar").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert_refused(to_png, entry.load(), match="PNG")


# -- PNG ------------------------------------------------------------------------------------

GOOD_PNG = png_card(card_v2())


def _ihdr(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))


PNG_CASES = {
    "truncated": (GOOD_PNG[:60], "truncated"),
    "bad crc": (GOOD_PNG[:29] + bytes([GOOD_PNG[29] ^ 1]) + GOOD_PNG[30:], "checksum"),
    "length past the end": (GOOD_PNG[:33] + struct.pack(">I", 0xFFFFFFF0) + GOOD_PNG[37:], "damaged PNG"),
    "length beyond 2^31": (GOOD_PNG[:33] + struct.pack(">I", 0x80000001) + GOOD_PNG[37:], "claims"),
    "no IEND": (GOOD_PNG[:-12], "no IEND"),
    "no IHDR": (GOOD_PNG[:8] + GOOD_PNG[33:], "no image header"),
    "zero width": (GOOD_PNG[:8] + _ihdr(0, 5) + GOOD_PNG[33:], "damaged PNG"),
    "bad depth": (GOOD_PNG[:8] + _ihdr(2, 2, depth=7) + GOOD_PNG[33:], "image header"),
    "enormous": (GOOD_PNG[:8] + _ihdr(70_000, 70_000) + GOOD_PNG[33:], "larger than"),
    "not base64": (with_chunks(tiny_png(), chunk(b"tEXt", b"chara\0{not base64}")), "not valid base64"),
    "base64 of bytes": (
        with_chunks(tiny_png(), chunk(b"tEXt", b"chara\0" + base64.b64encode(bytes(range(256))))),
        "not UTF-8",
    ),
    "base64 of a list": (with_chunks(tiny_png(), chunk(b"tEXt", b"chara\0" + base64.b64encode(b"[1]"))), "object"),
    "base64 of NaN": (
        with_chunks(tiny_png(), chunk(b"tEXt", b"chara\0" + base64.b64encode(b'{"name": NaN}'))),
        "not a number",
    ),
    "zTXt bomb": (
        with_chunks(tiny_png(), chunk(b"zTXt", b"ccv3\0\0" + zlib.compress(bytes(MAX_JSON_TEXT + 10)))),
        "inflates past",
    ),
    "iTXt bomb": (
        with_chunks(tiny_png(), chunk(b"iTXt", b"chara\0\1\0en\0\0" + zlib.compress(bytes(MAX_JSON_TEXT + 10)))),
        "inflates past",
    ),
    "damaged zTXt": (with_chunks(tiny_png(), chunk(b"zTXt", b"chara\0\0not zlib")), "damaged"),
    "no card": (tiny_png(), "without a character card"),
}


@pytest.mark.parametrize("case", sorted(PNG_CASES))
def test_broken_pngs_are_one_line(case: str, tmp_path: Path) -> None:
    data, match = PNG_CASES[case]
    refused(data, "card.png", tmp_path, match)


def test_apng_and_text_floods_are_accepted_quickly(tmp_path: Path) -> None:
    actl = chunk(b"acTL", struct.pack(">II", 0x7FFFFFFF, 0))
    fctl = chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, 2, 2, 0, 0, 1, 1, 0, 0))
    apng = GOOD_PNG[:33] + actl + fctl + GOOD_PNG[33:]
    assert assert_bounded(read_and_use, apng, "anim.png", tmp_path).kind == "ok"
    others = chunk(b"zTXt", b"comment\0\0" + zlib.compress(bytes(2 * 1024 * 1024))) * 300
    assert assert_bounded(read_card_bytes, with_chunks(GOOD_PNG, others), "t.png").kind == "ok"


@pytest.mark.parametrize(
    ("data", "suffix", "match"),
    [
        (bytes(range(256)) * 16, ".png", "not a PNG file"),
        (bytes(range(256)) * 16, ".apng", "not a PNG file"),
        (bytes(range(256)) * 16, ".charx", "not a CharX"),
        (bytes(range(256)) * 16, ".json", "not UTF-8"),
        (bytes(range(128, 256)) * 16, ".yaml", "not UTF-8"),
        (bytes(range(256)) * 16, ".card", "not a character card"),
        (b"name: x\x00\xff", ".png", "not a PNG"),
        (b"", ".png", "not a PNG"),
        (b"", ".json", "not valid JSON"),
    ],
)
def test_the_content_says_what_a_file_is(data: bytes, suffix: str, match: str, tmp_path: Path) -> None:
    refused(data, f"file{suffix}", tmp_path, match)


def test_a_misnamed_card_is_read_by_its_content(tmp_path: Path) -> None:
    assert read_card_bytes(json.dumps(card_v2()).encode(), "x.png", ".png").name == "Mira"
    assert read_card_bytes(GOOD_PNG, "x.json", ".json").name == "Mira"
    assert read_card_bytes(charx(card_v2()), "x.yaml", ".yaml").name == "Mira"


# -- YAML -----------------------------------------------------------------------------------

YAML_CASES = {
    "alias bomb": (YAML_ALIAS_BOMB, "alias"),
    "one alias": (b"name: &n Tess\ncontext: *n\n", "alias"),
    "python tag": (b"name: !!python/object/apply:os.system ['touch /tmp/pwned']\n", "not valid YAML"),
    "deep": (b"name: x\nv: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested"),
    "deep 100": (b"name: x\nv: " + b"[" * 100 + b"]" * 100 + b"\n", "nested"),
    "nan": (b"name: x\nv: .nan\n", "not finite"),
    "inf": (b"name: x\nv: -.inf\n", "not finite"),
    "huge int": (b"name: x\nv: " + b"9" * 5000 + b"\n", "YAML"),
    "too big": (b"name: x\ncontext: " + b"y" * MAX_YAML_TEXT + b"\n", "KiB"),
    "name list": (b"name: [a, b]\n", "'name' must be text"),
    "no name": (b"context: hi\nname_x: 1\n", "no name"),
    "a list": (b"- name: x\n", "no name"),
    "not utf-8": (b"name: \xff\xfe\n", "not UTF-8"),
    "tab indent": (b"name: x\ncontext:\n\t- a\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(YAML_CASES))
def test_hostile_yaml_is_one_line(case: str, tmp_path: Path) -> None:
    data, match = YAML_CASES[case]
    refused(data, "char.yaml", tmp_path, match)


def test_yaml_values_json_cannot_hold_become_text(tmp_path: Path) -> None:
    text = (
        b"name: 007\ncontext: hi\nwhen: 2020-01-01\nnested: {? 2020-01-02 : x, 3: [1, !!binary aGk=]}\ns: !!set {a}\n"
    )
    card = read_card_bytes(text, "t.yaml", ".yaml")
    assert card.name == "7"
    extra = card.data["extensions"]["text-generation-webui"]
    assert extra == {"when": "2020-01-01", "nested": {"2020-01-02": "x", "3": [1, "hi"]}, "s": "a"}
    assert assert_bounded(read_and_use, text, "t.yaml", tmp_path).kind == "ok"


# -- lorebooks: reading and scanning -------------------------------------------------------


@pytest.mark.parametrize("pattern", ["(a+)+$", "(a|aa)+$", "(a|a)*b", "(.*a){25}", "(x+x+)+y", "([a-z]+)*[0-9]"])
def test_catastrophic_regex_keys_are_bounded(pattern: str) -> None:
    book = Lorebook("b", [LoreEntry("1", [pattern], "x", use_regex=True), LoreEntry("2", ["hello"], "y")])
    messages = ["a" * 5000 + "!", "x" * 3000, "hello " + "a" * 60 + "!"]
    out = assert_bounded(lambda: [a.entry.uid for a in activate([book], messages)], keep_value=True)
    assert "2" in out.value  # the plain key still works
    assert out.seconds < SCAN_SECONDS + 1


def test_a_slow_regex_is_dropped_for_good() -> None:
    def twice() -> tuple[float, float]:
        import time

        book = Lorebook("b", [LoreEntry("1", ["/(a|aa)+$/"], "x")])
        messages = ["a" * 80 + "!"]
        t0 = time.monotonic()
        activate([book], messages)
        t1 = time.monotonic()
        activate([book], messages)
        return t1 - t0, time.monotonic() - t1

    first, second = assert_bounded(twice, keep_value=True).value
    assert second < 0.05 and first < SCAN_SECONDS + 0.5


@pytest.mark.parametrize("pattern", ["(", "[z-a]", "(?P<x>a)(?P<x>b)", "a{99999999999}", "(?:a{1000}){1000}", "\\"])
def test_broken_or_huge_regex_keys_match_nothing(pattern: str) -> None:
    book = Lorebook("b", [LoreEntry("1", [pattern], "x", use_regex=True)])
    out = assert_bounded(lambda: activate([book], ["a" * 2000]), keep_value=True)
    assert out.value == []


def test_a_key_flood_over_a_long_chat_stops_at_the_scan_bound() -> None:
    entries = [LoreEntry(str(i), [f"key{i}-{j}" for j in range(10)], "key1-1") for i in range(10_000)]
    book = Lorebook("flood", entries, recursive=True)
    out = assert_bounded(lambda: len(activate([book], ["word " * 50_000] * 4)), keep_value=True)
    assert out.seconds < SCAN_SECONDS + 1.5


@pytest.mark.parametrize(
    ("book", "match"),
    [
        ({"entries": [{"keys": ["a"], "content": "x"}] * (MAX_LIST_ITEMS + 1)}, "entries"),
        ({"entries": [{"keys": ["k"] * (MAX_LIST_ITEMS + 1), "content": "x"}]}, "keys"),
        ({"entries": [{"keys": "," * (MAX_LIST_ITEMS + 1), "content": "x"}]}, "keys"),
        ({"entries": [{"keys": ["k" * 5000], "content": "x"}]}, "key of"),
        ({"entries": [{"keys": ["a"], "content": "x" * (MAX_TEXT_FIELD + 1)}]}, "content is"),
        ({"entries": {"1": {"key": "a", "content": "x", "order": float("inf")}}}, "not a number"),
        ({"entries": {"1": {"key": 5}}}, "must be a list"),
        ({"entries": {"1": {"key": ["a"], "scanDepth": {"d": 1}}}}, "scanDepth must be a number"),
        ({"entries": {"1": {"key": ["a"], "comment": ["c"]}}}, "comment must be text"),
        ({"spec": "lorebook_v3", "data": []}, "needs a 'data' object"),
        ({"entries": "many"}, "not a lorebook"),
    ],
)
def test_hostile_lorebook_files_are_one_line(book: dict[str, Any], match: str, tmp_path: Path) -> None:
    path = tmp_path / "book.json"
    path.write_text(json.dumps(book))
    assert_refused(read_lorebook, path, match=match)


def test_lorebook_numbers_and_decorators_are_clamped(tmp_path: Path) -> None:
    path = tmp_path / "book.json"
    entries = [
        {"keys": ["a"], "content": "@@depth 99999999999\nx", "insertion_order": -(10**50)},
        {"keys": ["b"], "content": "@@depth ²\n@@depth -3\n@@activate\ny", "priority": 1e300},
        {"keys": ["c"], "content": "@@\n" * 100_000 + "z", "extensions": {"selectiveLogic": 10**20}},
    ]
    path.write_text(json.dumps({"entries": entries, "scan_depth": 10**9, "token_budget": 1e300}))
    book = assert_bounded(read_lorebook, path, keep_value=True).value
    assert book.scan_depth == MAX_SCAN_DEPTH and book.token_budget is not None
    first, second, third = book.entries
    assert first.depth is None and first.insertion_order == -MAX_ORDER and first.content == "x"
    assert second.depth is None and second.force_on and second.priority == MAX_ORDER and second.content == "y"
    assert third.content == "z" and third.logic == "and_any"
    active = activate([book], ["a b c"], count_tokens=len)
    assert [a.entry.content for a in active] == ["x", "y", "z"]


def test_eldoria_and_seraphina_still_read_the_same() -> None:
    world = read_lorebook(ELDORIA)
    assert [e.uid for e in world.entries] == ["0", "1", "2", "3"] and world.entries[0].keys[:2] == ["eldoria", "wood"]
    card = read_card(SERAPHINA)
    assert len(book_from_spec(card.data["character_book"], "s").entries) == 4


# -- macros and examples --------------------------------------------------------------------


def test_macro_expansion_is_linear_and_capped() -> None:
    ctx = MacroContext("Mira", "Anon")
    assert assert_bounded(expand, "{{" * 80_000, ctx, keep_value=True).value == "{{" * 80_000
    assert assert_bounded(expand, "{{" * 80_000 + "}}", ctx, keep_value=True).value == "{{" * 80_000 + "}}"
    assert expand("{{" * 3 + "char}}", ctx) == "{{" * 3 + "char}}"  # one macro, `{{{{char`: unknown
    assert expand("{{char}}}", ctx) == "Mira}"
    long = MacroContext("M" * 512, "Anon")
    out = assert_bounded(expand, "{{char}}" * 400_000, long, keep_value=True).value
    assert len(out) <= 8 * 400_000 + MAX_GROWTH + 512
    assert out.startswith("M" * 512) and out.endswith("{{char}}")
    legacy = assert_bounded(expand, "<BOT>" * 400_000, long, keep_value=True).value
    assert len(legacy) <= 5 * 400_000 + MAX_GROWTH + 512


@pytest.mark.parametrize(
    "text",
    [
        "{{roll:" + "9" * 100 + "d6}}",
        "{{roll:1d" + "9" * 5000 + "}}",
        "{{roll:" + "9" * 5000 + "}}",
        "{{roll:2d6+" + "9" * 5000 + "}}",
        "{{roll:²}}",
        "{{roll:1000000d6}}",
        "{{random:" + "a," * 2_000_000 + "b}}",
        "{{pick::" + "c::" * 1_000_000 + "}}",
        "{{random::}}",
        "{{pick:,}}",
    ],
    ids=range(10),
)
def test_hostile_macros_are_bounded(text: str) -> None:
    out = assert_bounded(expand, text, MacroContext("Mira", "Anon"), keep_value=True)
    assert isinstance(out.value, str) and len(out.value) <= len(text) + 16


def test_honest_macros_still_work() -> None:
    ctx = MacroContext("Mira", "Anon", chat_seed=3)
    assert (
        expand("{{user}} meets {{char}}. <USER>/<BOT>{{newline}}x{{// note}}", ctx) == "Anon meets Mira. Anon/Mira\nx"
    )
    assert expand("{{roll:3d1+2}} {{roll:1}}", ctx) == "5 1"
    assert expand("{{pick::a::b}}", ctx) == expand("{{pick::a::b}}", ctx)
    assert expand("{{random:x}}", ctx) == "x" and expand("{{unknown:x}}", ctx) == "{{unknown:x}}"


def test_examples_parse_in_linear_time() -> None:
    text = "\n" * 1_000_000 + "<START>\nAnon: hi\n" + "more\n" * 200_000 + "  <start>  \nMira: yo"
    blocks = assert_bounded(parse_examples, text, "Anon", "Mira", keep_value=True).value
    assert [[m.role for m in b] for b in blocks] == [["user"], ["assistant"]]
    assert blocks[0][0].content.count("more") == 200_000
    assert_bounded(parse_examples, " \n" * 1_000_000, "Anon", "Mira")


# -- library copies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("card.json", b"[" * 900 + b"]" * 900, "nested"),
        ("card.json", b'{"data":{"name":"x","description":NaN}}', "not a number"),
        ("card.json", b"[]", "not an object"),
        ("card.json", b'{"data":{"name":"x","character_book":{"entries":[{"keys":5}]}}}', "keys"),
        ("meta.json", b"[1]", "not an object"),
        ("meta.json", b'{"spec":{"x":1},"top":[1]}', None),
        ("card.json", None, "missing"),
    ],
)
def test_damaged_library_copies_are_one_line(
    name: str, content: bytes | None, match: str | None, tmp_path: Path
) -> None:
    library = CardLibrary(tmp_path / "cards")
    entry = library.add(read_card_bytes(json.dumps(card_v2()).encode(), "x.json"), "x")
    if content is None:
        (entry.folder / name).unlink()
    else:
        (entry.folder / name).write_bytes(content)
    if match is None:
        card = assert_bounded(load_card, entry.folder, keep_value=True).value
        assert card.spec == "chara_card_v3" and card.top == {}
    else:
        assert_refused(load_card, entry.folder, match=match)


def test_links_and_devices_in_a_library_copy_are_not_followed(tmp_path: Path) -> None:
    library = CardLibrary(tmp_path / "cards")
    entry = library.add(read_card_bytes(charx(card_v2(), {"assets/a.bin": b"1"}), "x.charx"), "x")
    (entry.folder / "files" / "assets" / "b.bin").symlink_to("/etc/passwd")
    assert_refused(load_card, entry.folder, match="not a plain file")
    (entry.folder / "files" / "assets" / "b.bin").unlink()
    (entry.folder / "avatar").symlink_to("/dev/zero")
    assert_refused(load_card, entry.folder, match="not a plain file")
    (entry.folder / "avatar").unlink()
    sparse = entry.folder / "card.json"
    with sparse.open("r+b") as f:
        f.truncate(3 * MAX_JSON_TEXT)
    assert_refused(load_card, entry.folder, match="damaged")


def test_remove_survives_a_leftover_from_an_interrupted_remove(tmp_path: Path) -> None:
    library = CardLibrary(tmp_path / "cards")
    entry = library.add(read_card_bytes(json.dumps(card_v2()).encode(), "x.json"), "x")
    (library.root / f".{entry.slug}.removing").mkdir()
    (library.root / f".{entry.slug}.removing" / "junk").write_text("x")
    library.remove(entry.slug)
    assert not entry.folder.exists() and [e.slug for e in library.entries()] == []


def test_an_unwritable_library_is_one_line(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root writes anywhere: a file where the folder should be fails for everyone.
        (tmp_path / "cards").write_text("not a folder")
    else:
        (tmp_path / "cards").mkdir()
        (tmp_path / "cards").chmod(0o500)
    card = read_card_bytes(json.dumps(card_v2()).encode(), "x.json")
    assert_refused(CardLibrary(tmp_path / "cards").add, card, match="cannot save the card")


# -- SillyTavern presets --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "match"),
    [
        ('{"input_sequence": "U", "output_sequence": NaN}', "not valid JSON"),
        ('{"input_sequence": ["U"], "output_sequence": "A"}', "must be a string"),
        ('{"input_sequence": "U", "output_sequence": "A", "name": {"n": 1}}', "name must be a string"),
        ('{"input_sequence": "U", "output_sequence": "A", "names_behavior": 5}', "names_behavior"),
        ('{"input_sequence": "' + "u" * 70_000 + '", "output_sequence": "A"}', "characters long"),
        ("[" * 3000 + "]" * 3000, "nested"),
        ('"just text"', "not a SillyTavern instruct preset"),
    ],
    ids=range(7),
)
def test_hostile_presets_are_one_line_and_write_nothing(
    preset: str, match: str, tmp_path: Path, cattery_home: Path
) -> None:
    path = tmp_path / "preset.json"
    path.write_text(preset)
    assert_refused(import_st_preset, path, tmp_path / "formats", match=match)
    assert not (tmp_path / "formats").exists() or not list((tmp_path / "formats").iterdir())


@pytest.mark.parametrize("name", ["x" * 300, "猫" * 300, "../../etc/evil", "con", "", "\x1b]0;title\x07"])
def test_a_presets_name_never_becomes_a_path(name: str, tmp_path: Path, cattery_home: Path) -> None:
    path = tmp_path / "preset.json"
    path.write_text(json.dumps({"name": name, "input_sequence": "\ud800U", "output_sequence": "A", "wrap": True}))
    target = assert_bounded(import_st_preset, path, tmp_path / "formats", keep_value=True).value
    assert target.parent == tmp_path / "formats" and len(target.name) <= 64 + len("-preset-st.toml")
    assert target.stem not in ("con", "nul", "")


# -- mutation tests, one per format -------------------------------------------------------

MUTATION = settings(
    max_examples=70,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


def _check(data: bytes, name: str, folder: Path) -> None:
    """Accepted and used (prompt, library, exports), or refused in one line; within the bounds."""
    out = run_bounded(read_and_use, data, name, folder)
    assert out.bounded, f"{name}: {out}"
    no_leftovers(folder)


def _bytes_mutations(data: bytes, draw: Any, steps: int = 6, repeat: int = 2000) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, steps))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "repeat"]))
        pos = draw(st.integers(0, max(0, len(out) - 1)))
        if kind == "flip" and out:
            out[pos] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del out[pos : pos + draw(st.integers(1, 64))]
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            out[pos:pos] = bytes(out[pos : pos + draw(st.integers(1, 32))]) * draw(st.integers(2, repeat))
    return bytes(out)


HOSTILE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(10**4000), 2**63, -1, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", "\x00", "\ud800", "{{" * 1000, "{{char}}" * 1000, "/(a|aa)+$/", "@@depth 9999999", ","]),
    st.lists(st.one_of(st.text(max_size=8), st.integers(), st.none()), max_size=5),
    st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=5), st.integers()), max_size=3),
    st.integers(60, 70).map(lambda d: json.loads("[" * d + "]" * d)),
)
CARD_PATHS = [
    ("name",),
    ("description",),
    ("first_mes",),
    ("mes_example",),
    ("tags",),
    ("alternate_greetings",),
    ("nickname",),
    ("extensions",),
    ("assets",),
    ("character_version",),
    ("character_book",),
    ("character_book", "entries"),
    ("character_book", "scan_depth"),
    ("character_book", "token_budget"),
    ("character_book", "entries", 0),
    ("character_book", "entries", 0, "keys"),
    ("character_book", "entries", 0, "secondary_keys"),
    ("character_book", "entries", 0, "content"),
    ("character_book", "entries", 0, "insertion_order"),
    ("character_book", "entries", 0, "priority"),
    ("character_book", "entries", 0, "id"),
    ("character_book", "entries", 0, "name"),
    ("character_book", "entries", 0, "extensions"),
    ("character_book", "entries", 0, "use_regex"),
]


def _has(obj: Any, key: Any) -> bool:
    if isinstance(obj, dict):
        return key in obj
    return isinstance(obj, list) and isinstance(key, int) and -len(obj) <= key < len(obj)


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    """`value` at `path` in `obj`, when the path still leads somewhere (an earlier mutation may
    have put a number where a list was)."""
    for key in path[:-1]:
        if not _has(obj, key):
            return
        obj = obj[key]
    if isinstance(obj, dict) or _has(obj, path[-1]):
        obj[path[-1]] = value


def _rich_card() -> dict[str, Any]:
    book = {
        "name": "Woods",
        "scan_depth": 3,
        "token_budget": 500,
        "recursive_scanning": True,
        "entries": [
            {"id": 1, "keys": ["forest", "/owl\\w*/i"], "content": "Owls {{char}}.", "secondary_keys": ["night"]},
            {"id": 2, "keys": ["^hello"], "use_regex": True, "content": "@@depth 2\nGreetings."},
        ],
    }
    return card_v2(character_book=book, alternate_greetings=["Hi {{user}}"], mes_example="<START>\n{{user}}: a")


@MUTATION
@given(st.data())
def test_mutated_card_json(tmp_path: Path, data: st.DataObject) -> None:
    card = _rich_card()
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(CARD_PATHS))
        _set(card["data"], path, data.draw(HOSTILE_VALUES))
    text = json.dumps(card, allow_nan=True).encode()
    if data.draw(st.booleans()):
        text = _bytes_mutations(text, data.draw, 3)
    _check(text, "card.json", tmp_path)


@MUTATION
@given(st.data())
def test_mutated_card_png_chunks(tmp_path: Path, data: st.DataObject) -> None:
    png = png_card(_rich_card())
    pos, chunks = 8, []
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        chunks.append([png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]])
        pos += 12 + length
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(chunks) - 1))
        kind = data.draw(st.sampled_from(["body", "type", "drop", "dup", "text", "length", "crc"]))
        if kind == "body":
            chunks[i][1] = _bytes_mutations(chunks[i][1], data.draw, 3)
        elif kind == "type":
            chunks[i][0] = data.draw(st.sampled_from([b"IHDR", b"IEND", b"IDAT", b"tEXt", b"zTXt", b"iTXt", b"acTL"]))
        elif kind == "drop" and len(chunks) > 1:
            del chunks[i]
        elif kind == "dup":
            chunks.insert(i, list(chunks[i]))
        elif kind == "text":
            keyword = data.draw(st.sampled_from([b"chara", b"ccv3", b"CHARA", b"x"]))
            payload = data.draw(st.one_of(st.binary(max_size=64), st.just(base64.b64encode(b'{"name": 1e999}'))))
            ctype = data.draw(st.sampled_from([b"tEXt", b"zTXt", b"iTXt"]))
            body = keyword + b"\0" + (b"\0" + zlib.compress(payload) if ctype == b"zTXt" else payload)
            if ctype == b"iTXt":
                body = keyword + b"\0\0\0en\0\0" + payload
            chunks.insert(i, [ctype, body])
        elif kind == "length":
            chunks[i].append(data.draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, len(chunks[i][1]) + 1])))
        else:
            chunks[i].append("badcrc")
    out = [png[:8]]
    for item in chunks:
        ctype, body = item[0], item[1]
        length = next((x for x in item[2:] if isinstance(x, int)), len(body))
        crc = zlib.crc32(ctype + body) ^ (1 if "badcrc" in item[2:] else 0)
        out.append(struct.pack(">I", length) + ctype + body + struct.pack(">I", crc))
    _check(b"".join(out), "card.png", tmp_path)


CHARX_NAMES = st.sampled_from(
    [
        "assets/a",
        "assets/a/b",
        "assets/A",
        "../x",
        "/abs",
        "a\\b",
        "assets/",
        "card.json",
        "CARD.JSON",
        "assets/con.png",
        "assets/x.",
        "assets/\x01",
        "assets/icon/images/main.png",
        "x" * 300,
    ]
)


@MUTATION
@given(st.data())
def test_mutated_charx(tmp_path: Path, data: st.DataObject) -> None:
    card = _rich_card()
    if data.draw(st.booleans()):
        _set(card["data"], data.draw(st.sampled_from(CARD_PATHS)), data.draw(HOSTILE_VALUES))
    icon = data.draw(st.sampled_from([tiny_png(), jpeg(), b"not an image", tiny_png()[:40]]))
    entries: list[tuple[Any, bytes]] = [("card.json", json.dumps(card, allow_nan=True).encode())]
    entries.append(("assets/icon/images/main.png", icon))
    card["data"]["assets"] = [{"type": "icon", "uri": "embeded://assets/icon/images/main.png", "name": "main"}]
    entries[0] = ("card.json", json.dumps(card, allow_nan=True).encode())
    for _ in range(data.draw(st.integers(0, 3))):
        name = data.draw(CHARX_NAMES)
        if data.draw(st.booleans()):
            entries.append(symlink_entry(name, b"/etc/passwd") if data.draw(st.booleans()) else (name, b"data"))
        else:
            entries.append((name, data.draw(st.binary(max_size=32))))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Duplicate name": duplicates are the point
            raw = zip_bytes(entries, data.draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])))
    except (ValueError, UnicodeEncodeError):  # names the zip module will not write
        return
    if data.draw(st.booleans()):
        raw = _bytes_mutations(raw, data.draw, 3)
    _check(raw, "card.charx", tmp_path)


YAML_SNIPPETS = st.sampled_from(
    [
        "a: &x [1, 2]\nb: *x\n",
        "x: !!python/name:os.system\n",
        "x: " + "[" * 80 + "]" * 80 + "\n",
        "x: .nan\n",
        "? [a, b]\n: c\n",
        "x: !!binary aGk=\n",
        "x: 2020-01-01\n",
        "\t- bad\n",
        "name: [1]\n",
        "name: {a: 1}\n",
        "context: " + "{{" * 500 + "\n",
        'greeting: "\\ud800"\n',
        "example_dialogue: |\n  <START>\n  {{user}}: hi\n",
        "---\nname: second\n",
    ]
)


@MUTATION
@given(st.data())
def test_mutated_yaml(tmp_path: Path, data: st.DataObject) -> None:
    lines = ["name: Tess\n", "context: A librarian of {{char}}.\n", "greeting: Quiet, {{user}}.\n", "your_name: R\n"]
    for _ in range(data.draw(st.integers(1, 3))):
        lines.insert(data.draw(st.integers(0, len(lines))), data.draw(YAML_SNIPPETS))
    text = "".join(lines).encode("utf-8", "surrogatepass")
    if data.draw(st.booleans()):  # short repeats: PyYAML takes a second or two near the size bound
        text = _bytes_mutations(text, data.draw, 3, repeat=50)
    _check(text, "char.yaml", tmp_path)


LORE_PATHS = [
    ("entries",),
    ("name",),
    ("entries", "0"),
    ("entries", "0", "key"),
    ("entries", "0", "keysecondary"),
    ("entries", "0", "content"),
    ("entries", "0", "order"),
    ("entries", "0", "position"),
    ("entries", "0", "scanDepth"),
    ("entries", "0", "selectiveLogic"),
    ("entries", "0", "comment"),
    ("entries", "0", "uid"),
    ("entries", "1", "key"),
    ("entries", "1", "content"),
    ("entries", "2", "order"),
]


@MUTATION
@given(st.data())
def test_mutated_lorebook(tmp_path: Path, data: st.DataObject) -> None:
    world = json.loads(ELDORIA.read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        _set(world, data.draw(st.sampled_from(LORE_PATHS)), data.draw(HOSTILE_VALUES))
    if data.draw(st.booleans()):
        world = {"spec": "lorebook_v3", "data": _rich_card()["data"]["character_book"]}
        _set(world["data"], data.draw(st.sampled_from(CARD_PATHS[11:]))[1:], data.draw(HOSTILE_VALUES))
    text = json.dumps(world, allow_nan=True).encode()
    if data.draw(st.booleans()):
        text = _bytes_mutations(text, data.draw, 3)
    path = tmp_path / "book.json"
    path.write_bytes(text)

    def scan() -> int:
        book = read_lorebook(path)
        chat = ["I walk into the forest of Eldoria.", "Beasts! The Shadowfangs!", "hello " + "a" * 200]
        return len(activate([book], chat, count_tokens=len))

    out = run_bounded(scan)
    assert out.bounded and (out.kind == "ok" or out.detail.startswith(str(path))), out


# -- the command line, as a user runs it ----------------------------------------------------


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_cli_import_of_hostile_files_is_one_line_each(cattery_home: Path, tmp_path: Path) -> None:
    files = {
        "deep.json": deep_json_card(900),
        "inf.json": book_card('{"keys":["a"],"content":"x","priority":NaN}'),
        "clash.charx": charx(card_v2(), {"assets/a": b"1", "assets/a/b": b"2"}),
        "link.charx": zip_bytes([("card.json", json.dumps(card_v2()).encode()), symlink_entry("../../x", b"/")]),
        "icon.charx": charx(card_v2(), {"i.png": b"text"}, icon="i.png"),
        "bomb.yaml": YAML_ALIAS_BOMB,
        "random.png": bytes(range(256)) * 8,
    }
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    before = _snapshot(tmp_path)
    r = run_cattery("cards", "import", *paths, home=cattery_home, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(lines) == len(files) and all(line.startswith("cattery: error: ") for line in lines), lines
    for line, name in zip(lines, files, strict=True):
        assert name in line
    assert "not a PNG" in lines[-1] and "alias" in lines[-2] and "not an image" in lines[-3]
    assert {p for p in _snapshot(tmp_path) if not p.startswith("home")} == before
    cards = cattery_home / "data" / "cards"
    assert not cards.exists() or not list(cards.iterdir())  # nothing half-imported


def test_cli_show_export_list_rm_on_hostile_cards(cattery_home: Path, tmp_path: Path) -> None:
    name = "\x1b[2J" + "猫" * 300
    mira = tmp_path / "mira.json"
    mira.write_text(json.dumps(card_v2(name, description="{{" * 80_000)))
    imported = run_cattery("cards", "import", str(mira), home=cattery_home)
    assert imported.returncode == 0, imported.stderr
    assert "\x1b" not in imported.stdout and "\\u001b" in imported.stdout  # shown, not obeyed
    cards = cattery_home / "data" / "cards"
    (folder,) = list(cards.iterdir())
    assert len(folder.name.encode()) <= SLUG_BYTES
    shown = run_cattery("cards", "show", "x" * 5000, home=cattery_home)
    assert_one_line_failure(shown, match="no such card")
    out = tmp_path / "out.png"
    exported = run_cattery("cards", "export", folder.name, "--to", "png", "-o", str(out), home=cattery_home)
    assert exported.returncode == 0, exported.stderr
    assert read_card(out).name == name
    (folder / "card.json").write_bytes(b"[" * 900 + b"]" * 900)
    listed = run_cattery("cards", "list", home=cattery_home)
    assert listed.returncode == 0 and listed.stderr.startswith("warning: ") and "nested" in listed.stderr
    assert_one_line_failure(run_cattery("cards", "show", folder.name, home=cattery_home), match="nested")
    removed = run_cattery("cards", "rm", folder.name, home=cattery_home)
    assert removed.returncode == 0 and list(cards.iterdir()) == []


def test_cli_show_of_a_hostile_file(cattery_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(with_chunks(tiny_png(), chunk(b"zTXt", b"chara\0\0" + zlib.compress(bytes(MAX_JSON_TEXT + 1)))))
    assert_one_line_failure(run_cattery("cards", "show", str(path), home=cattery_home), match="inflates past")
    assert {p.name for p in tmp_path.iterdir()} - {"home"} == {"bomb.png"}


def test_catteryerror_is_the_only_error_type() -> None:
    assert issubclass(CardError, CatteryError)
