"""The worst cases of the cards and lorebooks door, for bench/hostile.py and the tests.

Each case builds its hostile input (files in a fresh temporary folder where the real
path reads files) and pushes it through the real code path: `read_card` and a real
`CardLibrary` import, `read_lorebook` and `activate` over a chat, `card_prompt`'s macro
expansion and example parsing, `import_st_preset`. The ones here are those that used
to hang, crash or eat memory (issue 13), and those that sit at a bound (the largest
input still accepted).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.cards.card import Card
from app.cards.errors import MAX_JSON_TEXT, MAX_JSON_VALUES, MAX_PNG_CHUNKS, MAX_YAML_TEXT
from app.cards.library import CardLibrary
from app.cards.lorebook import activate, read_lorebook
from app.cards.macros import MacroContext, expand
from app.cards.png_chunks import PNG_SIGNATURE
from app.cards.prompting import Persona, card_prompt
from app.cards.read import read_card, read_card_bytes
from app.cards.write import to_charx, to_png

# -- building blocks ---------------------------------------------------------------------


def chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def tiny_png(width: int = 2, height: int = 2) -> bytes:
    """A real 8-bit RGB PNG, written by hand so that building it costs nothing."""
    rows = b"".join(b"\0" + b"\x80\x40\x20" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def with_chunks(png: bytes, extra: list[bytes] | bytes) -> bytes:
    """`png` with chunks inserted before IEND, where card tools put theirs."""
    body = extra if isinstance(extra, bytes) else b"".join(extra)
    return png[:-12] + body + png[-12:]


def card_v2(name: str = "Mira", **data: Any) -> dict[str, Any]:
    base = {"name": name, "description": "A fox spirit.", "first_mes": "Hello, {{user}}.", "tags": ["fox"]}
    base.update(data)
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": base}


def png_card(card: dict[str, Any] | bytes, keyword: str = "chara") -> bytes:
    raw = card if isinstance(card, bytes) else json.dumps(card).encode()
    return with_chunks(tiny_png(), chunk(b"tEXt", keyword.encode() + b"\0" + base64.b64encode(raw)))


def zip_bytes(entries: list[tuple[str | zipfile.ZipInfo, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries:
            # A fixed date: the same entries give the same bytes (hypothesis replays them).
            info = zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0)) if isinstance(name, str) else name
            zf.writestr(info, data, compress_type=method)
    return buf.getvalue()


def charx(card: dict[str, Any], files: dict[str, bytes] | None = None, icon: str | None = None) -> bytes:
    card = json.loads(json.dumps(card))
    if icon:
        card["data"]["assets"] = [{"type": "icon", "uri": f"embeded://{icon}", "name": "main", "ext": "png"}]
    return zip_bytes([("card.json", json.dumps(card).encode()), *(files or {}).items()])


def symlink_entry(name: str, target: bytes) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix
    info.external_attr = (0o120777 << 16) & 0xFFFF0000
    return info, target


def central_directory_flood(records: int, claimed: int) -> bytes:
    """A zip that is nothing but a central directory of `records` entries (46 bytes each,
    empty names) and an end record claiming `claimed` entries: never a local header."""
    record = b"PK\x01\x02" + bytes(42)
    directory = record * records
    end = b"PK\x05\x06" + struct.pack("<4H2LH", 0, 0, min(claimed, 0xFFFF), min(claimed, 0xFFFF), len(directory), 0, 0)
    return directory + end


YAML_ALIAS_BOMB = b"""name: lol
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
"""


def deep_json_card(depth: int) -> bytes:
    nest = b"[" * depth + b"]" * depth
    return b'{"spec":"chara_card_v2","data":{"name":"Deep","extensions":{"x":' + nest + b"}}}"


def book_card(entry: dict[str, Any] | str) -> bytes:
    """A V2 card whose lorebook has one entry (`entry` as raw JSON text when a str, for NaN)."""
    text = entry if isinstance(entry, str) else json.dumps(entry)
    return b'{"spec":"chara_card_v2","data":{"name":"Lore","character_book":{"entries":[' + text.encode() + b"]}}}"


def _in_temp(build: Callable[[Path], Any]) -> Any:
    with tempfile.TemporaryDirectory(prefix="cattery-hostile-cards-") as tmp:
        return build(Path(tmp))


def import_file(data: bytes, filename: str) -> str:
    """What `cattery cards import` does: read the file, add it to a real library."""

    def build(folder: Path) -> str:
        path = folder / filename
        path.write_bytes(data)
        return CardLibrary(folder / "cards").add(read_card(path), str(path)).slug

    return _in_temp(build)


def import_export(data: bytes, filename: str) -> int:
    """Import, then export the library copy to every format, as `cattery cards export` does."""

    def build(folder: Path) -> int:
        path = folder / filename
        path.write_bytes(data)
        entry = CardLibrary(folder / "cards").add(read_card(path), str(path))
        card = entry.load()
        return len(to_png(card)) + len(to_charx(card))

    return _in_temp(build)


def prompt_of(card: Card, messages: list[str] | None = None) -> int:
    """A card's prompt as a chat builds it: macros, examples, greetings, its lorebook on the chat."""
    from app.cards.lorebook import book_from_spec

    cp = card_prompt(card, persona=Persona("Traveller"))
    books = [book_from_spec(card.data["character_book"], card.name)] if card.data.get("character_book") else []
    active = activate(books, messages or ["hello"])
    return len(cp.system) + sum(len(b) for b in cp.greetings) + len(active)


# -- the cases ---------------------------------------------------------------------------


def deep_card_json() -> str:
    """A card nested 900 levels deep (RecursionError while it was copied)."""
    return import_file(deep_json_card(900), "deep.json")


def infinite_insertion_order() -> str:
    """`insertion_order: Infinity` in the card's lorebook (imported, then every prompt crashed)."""
    return import_file(book_card('{"keys":["a"],"content":"x","insertion_order":Infinity}'), "inf.json")


def huge_number_priority() -> int:
    """`priority: 1e308` and a 4,000-digit insertion order: clamped, and the prompt is built."""
    entry = '{"keys":["hello"],"content":"x","priority":1e308,"insertion_order":' + "9" * 4000 + "}"
    return prompt_of(read_card_bytes(book_card(entry), "big.json"))


def long_name() -> str:
    """A name of 300 characters, and of 300 CJK characters (900 bytes): OSError: File name too long."""
    import_file(json.dumps(card_v2("N" * 300)).encode(), "long.json")
    return import_file(json.dumps(card_v2("猫" * 300)).encode(), "long-cjk.json")


def charx_file_and_folder() -> str:
    """CharX entries `assets/a` and `assets/a/b` (FileExistsError while saved)."""
    return import_file(charx(card_v2(), {"assets/a": b"1", "assets/a/b": b"2"}), "clash.charx")


def charx_symlink() -> str:
    """A CharX entry that is a symbolic link to /etc/passwd."""
    return import_file(
        zip_bytes([("card.json", json.dumps(card_v2()).encode()), symlink_entry("assets/x", b"/etc/passwd")]),
        "link.charx",
    )


def charx_icon_not_an_image() -> int:
    """A CharX whose icon is text (imported, then `export --to png` crashed in Pillow)."""
    return import_export(charx(card_v2(), {"assets/icon.png": b"not an image"}, icon="assets/icon.png"), "icon.charx")


def charx_directory_flood() -> str:
    """A central directory of 90,000 entries whose end record claims one: bounded by its size."""
    return import_file(central_directory_flood(90_000, 1), "flood.charx")


def charx_entry_count() -> str:
    """An end record claiming 65,535 entries."""
    return import_file(central_directory_flood(65_535, 65_535), "count.charx")


def charx_zip_bomb() -> str:
    """20 MB of zeros in 20 KB."""
    return import_file(charx(card_v2(), {"assets/bomb.bin": bytes(20 * 1024 * 1024)}), "bomb.charx")


def yaml_alias_bomb() -> str:
    """317 bytes of nested YAML aliases (2 GB and a minute)."""
    return import_file(YAML_ALIAS_BOMB, "bomb.yaml")


def yaml_at_the_bound() -> str:
    """A YAML character just under the size bound, in PyYAML's slowest shape (a flow list)."""
    head = b"name: Tess\ncontext: A librarian.\nnotes: ["
    items = (MAX_YAML_TEXT - len(head) - 8) // 2
    return import_file(head + b"1," * items + b"1]\n", "big.yaml")


def random_bytes_named_png() -> str:
    """Random bytes named .png (said "not valid YAML")."""
    return import_file(bytes(range(256)) * 64 + b"name: x", "random.png")


def png_chunk_flood() -> str:
    """More chunks than any PNG has: 100,001 empty ancillary chunks before the card."""
    flood = chunk(b"teST", b"") * (MAX_PNG_CHUNKS + 1)
    return import_file(with_chunks(png_card(card_v2()), flood), "flood.png")


def png_text_flood() -> str:
    """5,000 compressed text chunks of 1 MiB each (other keywords): never inflated."""
    one = chunk(b"zTXt", b"comment\0\0" + zlib.compress(bytes(1024 * 1024)))
    return import_file(with_chunks(png_card(card_v2()), one * 5000), "texts.png")


def png_chara_inflates_too_far() -> str:
    """A zTXt `chara` chunk that inflates past 16 MiB."""
    body = b"chara\0\0" + zlib.compress(b"A" * (MAX_JSON_TEXT + 1024))
    return import_file(with_chunks(tiny_png(), chunk(b"zTXt", body)), "ztxt.png")


def png_enormous_dimensions() -> str:
    """A header claiming 100,000 × 100,000 pixels (a decompression bomb for Pillow)."""
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    text = chunk(b"tEXt", b"chara\0" + base64.b64encode(json.dumps(card_v2()).encode()))
    png = PNG_SIGNATURE + ihdr + chunk(b"IDAT", zlib.compress(b"\0")) + text + chunk(b"IEND", b"")
    return import_file(png, "huge.png")


def largest_card_json() -> int:
    """A card of 15 MiB of JSON holding the most values allowed as empty objects (the costliest
    kind; each counts twice, its brace and its comma), the rest text: imported, read back from
    the library and exported."""
    count = (MAX_JSON_VALUES - 100) // 2

    def build(folder: Path) -> int:
        path = folder / "big.json"
        with path.open("wb") as f:
            f.write(b'{"spec":"chara_card_v2","data":{"name":"Big","creator_notes":"')
            f.write(b"x" * (15 * 1024 * 1024 - 3 * count))
            f.write(b'","extensions":{"x":[' + b"{}," * count + b"{}]}}}")
        entry = CardLibrary(folder / "cards").add(read_card(path), str(path))
        card = entry.load()
        return len(to_png(card)) + len(to_charx(card))

    return _in_temp(build)


def too_many_values() -> str:
    """Eight million numbers in 16 MiB: refused from its commas, before one is parsed."""
    text = (
        b'{"spec":"chara_card_v2","data":{"name":"Big","extensions":{"x":[' + b"0," * (8 * 1024 * 1024 - 64) + b"0]}}}"
    )
    return import_file(text, "many.json")


def lorebook_exponential_regex() -> int:
    """Regex keys `(a|aa)+$` (exponential backtracking) over a chat of a's."""
    entries = [{"keys": [f"(a|aa)+(b|{i})?$"], "use_regex": True, "content": "x"} for i in range(40)]
    book: dict[str, Any] = {"spec": "lorebook_v3", "data": {"entries": entries}}

    def build(folder: Path) -> int:
        path = folder / "book.json"
        path.write_text(json.dumps(book))
        return len(activate([read_lorebook(path)], ["a" * 60 + "!"] * 4))

    return _in_temp(build)


def lorebook_key_flood() -> int:
    """10,000 entries of 10 keys each over a chat of four 200 KB messages, recursive."""
    entries = [{"keys": [f"k{i}-{j}" for j in range(10)], "content": "k1-1 " * 20} for i in range(10_000)]

    def build(folder: Path) -> int:
        path = folder / "book.json"
        path.write_text(json.dumps({"entries": entries, "recursive_scanning": True}))
        return len(activate([read_lorebook(path)], ["word " * 40_000] * 4))

    return _in_temp(build)


def macro_braces() -> int:
    """80,000 `{{` and no `}}` (quadratic: 110 s)."""
    return len(expand("{{" * 80_000, MacroContext("Mira", "Anon")))


def macro_growth() -> int:
    """400,000 `{{char}}` with a name of 512 characters: 200 MB if every one were expanded."""
    return len(expand("{{char}}" * 400_000, MacroContext("M" * 512, "Anon")))


def macro_dice_and_lists() -> int:
    """`{{roll}}` with 10^100 dice, `{{random}}` of two million choices, `{{pick}}` likewise."""
    text = "{{roll:" + "9" * 100 + "d6}} {{random:" + "a," * 2_000_000 + "b}} {{pick::" + "c::" * 1_000_000 + "}}"
    return len(expand(text, MacroContext("Mira", "Anon")))


def examples_blank_lines() -> int:
    """A `mes_example` of 1,500,000 newlines, then a turn of 100,000 lines (both quadratic)."""
    card = card_v2(mes_example="\n" * 1_500_000 + "<START>\n{{user}}: hi\n" + "more\n" * 100_000)
    return prompt_of(read_card_bytes(json.dumps(card).encode(), "ex.json"))


def st_preset_hostile() -> str:
    """A SillyTavern preset nested 5,000 deep, then one with a 300-character name."""
    from app.errors import CatteryError
    from app.prompt.st_import import import_st_preset

    def build(folder: Path) -> str:
        deep = folder / "deep.json"
        deep.write_bytes(b"[" * 5000 + b"]" * 5000)
        with contextlib.suppress(CatteryError):
            import_st_preset(deep, folder / "formats")
        named = folder / "named.json"
        named.write_text(json.dumps({"name": "x" * 300, "input_sequence": "U:", "output_sequence": "A:"}))
        return import_st_preset(named, folder / "formats").name

    return _in_temp(build)


WORST_CASES: list[tuple[str, Callable[[], object]]] = [
    ("card JSON nested 900 deep", deep_card_json),
    ("lorebook insertion_order: Infinity", infinite_insertion_order),
    ("lorebook priority 1e308, 4,000-digit order", huge_number_priority),
    ("names of 300 characters (900 bytes)", long_name),
    ("CharX assets/a and assets/a/b", charx_file_and_folder),
    ("CharX symlink entry", charx_symlink),
    ("CharX icon that is not an image", charx_icon_not_an_image),
    ("CharX central directory of 90,000 entries", charx_directory_flood),
    ("CharX claiming 65,535 entries", charx_entry_count),
    ("CharX zip bomb (20 MB of zeros)", charx_zip_bomb),
    ("YAML alias bomb (317 bytes)", yaml_alias_bomb),
    ("YAML flow list at the 64 KiB bound", yaml_at_the_bound),
    ("random bytes named .png", random_bytes_named_png),
    ("PNG of 100,001 chunks", png_chunk_flood),
    ("PNG of 5,000 compressed text chunks", png_text_flood),
    ("PNG chara zTXt inflating past 16 MiB", png_chara_inflates_too_far),
    ("PNG claiming 100,000 x 100,000 pixels", png_enormous_dimensions),
    ("card JSON of 15 MiB, 250,000 objects, imported and exported", largest_card_json),
    ("card JSON of 8,000,000 numbers", too_many_values),
    ("lorebook regex keys (a|aa)+$ on a's", lorebook_exponential_regex),
    ("lorebook 100,000 keys over 800 KB of chat", lorebook_key_flood),
    ("macros: 80,000 {{", macro_braces),
    ("macros: 400,000 {{char}}, 512-character name", macro_growth),
    ("macros: 10^100 dice, 2,000,000 choices", macro_dice_and_lists),
    ("mes_example: 1,500,000 newlines, a turn of 100,000 lines", examples_blank_lines),
    ("SillyTavern preset 5,000 deep, 300-character name", st_preset_hostile),
]
