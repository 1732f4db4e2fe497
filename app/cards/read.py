"""Reading a character card from any format users have: PNG/APNG, JSON (V1, V2, V3,
Pygmalion/Gradio), CharX and text-generation-webui YAML.

A card file is a stranger's: what it is comes from its content, not its name (random
bytes named `.png` are "not a PNG file"), and each container is checked before it is
opened up: a PNG's chunks (lengths, CRCs, header, count), a CharX's central directory
(size, then every entry: path, type, size, ratio, collisions) and a YAML file's size.
Whatever is wrong is one `CardError` line naming the file.
"""

from __future__ import annotations

import base64
import binascii
import io
import posixpath
import re
import stat
import struct
import unicodedata
import zipfile
import zlib
from pathlib import Path
from typing import Any

from app.cards.card import V1_FIELDS, Card, normalise_data
from app.cards.errors import (
    MAX_CARD_FILE,
    MAX_CENTRAL_DIRECTORY,
    MAX_CHARX_ENTRIES,
    MAX_CHARX_TOTAL,
    MAX_COMPRESSION_RATIO,
    MAX_IMAGE_PIXELS,
    MAX_JSON_TEXT,
    MAX_MEMBER_PATH,
    MAX_PATH_PART,
    CardError,
)
from app.cards.images import check_image
from app.cards.parse import jsonable, load_json, load_yaml, read_file
from app.cards.png_chunks import PNG_SIGNATURE, image_size, iter_chunks, text_chunks

EMBEDDED = ("embeded://", "embedded://")  # the spec's spelling, and the one people type
CARD_CHUNKS = ("ccv3", "chara")  # V3 wins when both are there
_BY_SUFFIX = {".png": "png", ".apng": "png", ".charx": "charx", ".json": "json", ".yaml": "yaml", ".yml": "yaml"}
_YAML_NAME = re.compile(rb"(?m)^name[ \t]*:")


def _json(text: bytes | str, source: str, what: str) -> Any:
    return load_json(text, source, what)


def card_from_json(obj: Any, source: str, avatar: bytes | None = None) -> Card:
    if not isinstance(obj, dict):
        raise CardError(source, "a card must be a JSON object")
    spec = obj.get("spec")
    top = {k: v for k, v in obj.items() if k not in ("spec", "spec_version", "data")}
    if spec in ("chara_card_v2", "chara_card_v3"):
        for key in V1_FIELDS:  # V1 mirrors at the top are written again from the data on export
            top.pop(key, None)
        return Card(normalise_data(obj.get("data"), source), spec, top, avatar)
    if isinstance(spec, str) and spec:
        raise CardError(source, f"unknown card spec {spec[:80]!r}")
    if "entries" in obj and "name" not in obj and "char_name" not in obj:
        raise CardError(source, "this is a lorebook (World Info), not a character card")
    if "char_name" in obj:  # Pygmalion / Gradio
        data = {
            "name": obj.get("char_name"),
            "description": obj.get("char_persona"),
            "first_mes": obj.get("char_greeting"),
            "scenario": obj.get("world_scenario"),
            "mes_example": obj.get("example_dialogue"),
        }
        rest = {
            k: v
            for k, v in obj.items()
            if k not in ("char_name", "char_persona", "char_greeting", "world_scenario", "example_dialogue")
        }
        return Card(normalise_data(data, source), "pygmalion", rest, avatar)
    if "name" in obj:  # V1: the fields at the top
        data = {k: obj.get(k) for k in V1_FIELDS}
        rest = {k: v for k, v in obj.items() if k not in V1_FIELDS}
        return Card(normalise_data(data, source), "v1", rest, avatar)
    raise CardError(source, "not a character card (no name, no spec)")


# -- PNG ---------------------------------------------------------------------------------


def read_png(data: bytes, source: str) -> Card:
    chunks = iter_chunks(data, source)
    width, height = image_size(chunks, source)
    if width * height > MAX_IMAGE_PIXELS:
        raise CardError(source, f"the image is {width}×{height}, larger than the {MAX_IMAGE_PIXELS:,} pixels allowed")
    texts = text_chunks(chunks, source, wanted=CARD_CHUNKS)
    for key in CARD_CHUNKS:
        if key in texts:
            encoded = b"".join(texts[key].split())
            try:
                raw = base64.b64decode(encoded + b"=" * (-len(encoded) % 4), validate=True)
            except (binascii.Error, ValueError):
                raise CardError(source, f"the {key!r} chunk is not valid base64") from None
            return card_from_json(_json(raw, source, f"the {key!r} chunk"), source, avatar=data)
    raise CardError(source, "a PNG without a character card in it (no 'chara' or 'ccv3' text chunk)")


# -- CharX -------------------------------------------------------------------------------

_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
_LINK_OR_DEVICE = (stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)


def member_problem(name: str) -> str | None:
    """Why an archive path cannot become a file under the card's folder, or None.

    It must be relative, without `.`/`..`/empty parts, backslashes, drive letters, control
    characters or parts Windows reserves, and short enough for every file system.
    """
    if not name or len(name) > MAX_MEMBER_PATH:
        return "an empty or overlong path"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return "a control character in its path"
    if "\\" in name or ":" in name:
        return "a backslash or a colon in its path"
    if name.startswith("/"):
        return "an absolute path"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return "an empty, '.' or '..' part in its path"
        if len(part.encode("utf-8", "surrogatepass")) > MAX_PATH_PART:
            return "a name longer than a file system allows"
        if part.split(".")[0].lower() in _RESERVED or part[-1] in ". ":
            return "a name Windows reserves"
    return None


def _fold(name: str) -> str:
    """The form two paths clash in on a case-insensitive, normalising file system (macOS, Windows)."""
    return unicodedata.normalize("NFC", name).casefold()


def _central_directory_bound(data: bytes, source: str) -> None:
    """Refuse a central directory too big to list, before zipfile builds an object per entry.

    zipfile reads the end-of-central-directory record the same way (this is its own
    reader); from it comes the number of entries and the directory's size in bytes.
    """
    end = zipfile._EndRecData(io.BytesIO(data))  # type: ignore[attr-defined]
    if end is None:
        raise CardError(source, "not a CharX (zip) archive")
    entries, size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if entries > MAX_CHARX_ENTRIES:
        raise CardError(source, f"the archive has {entries:,} entries, more than the {MAX_CHARX_ENTRIES:,} allowed")
    if size > MAX_CENTRAL_DIRECTORY:
        raise CardError(source, f"the archive's directory is {size:,} bytes, more than a card's can be")


def _check_members(infos: list[zipfile.ZipInfo], source: str) -> dict[str, zipfile.ZipInfo]:
    """The archive's files by path, once every entry is known to be safe to unpack."""
    if len(infos) > MAX_CHARX_ENTRIES:
        raise CardError(source, f"the archive has more than {MAX_CHARX_ENTRIES:,} entries")
    files: dict[str, zipfile.ZipInfo] = {}
    folded_files: dict[str, str] = {}
    folded_folders: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        shown = repr(name[:120])
        is_dir = name.endswith("/")
        path = name[:-1] if is_dir else name
        problem = member_problem(path)
        if problem:
            outside = problem.startswith(("an absolute", "an empty, '.'", "a backslash"))
            verdict = "points outside the card" if outside else "cannot be a file in the card's folder"
            raise CardError(source, f"the archive entry {shown} {verdict} ({problem})")
        kind = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0
        if kind in _LINK_OR_DEVICE:
            raise CardError(source, f"the archive entry {shown} is a link or a device, not a file")
        if info.flag_bits & 0x1:
            raise CardError(source, f"the archive entry {shown} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CardError(source, f"the archive entry {shown} uses a compression CharX files do not use")
        total += info.file_size
        if info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1) and info.file_size > 1 << 20:
            raise CardError(source, f"the archive entry {shown} looks like a zip bomb")
        folded = _fold(path)
        parts = folded.split("/")
        parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if is_dir:
            if folded in folded_files:
                raise CardError(source, f"the archive entry {shown} is both a file and a folder")
            folded_folders.add(folded)
        else:
            if folded in folded_files:
                raise CardError(source, f"the archive has {shown} twice (letter case aside)")
            if folded in folded_folders:
                raise CardError(source, f"the archive entry {shown} is both a file and a folder")
            folded_files[folded] = path
            files[path] = info
        for parent in parents:
            if parent in folded_files:
                raise CardError(source, f"the archive entry {shown} is inside a file ({folded_files[parent]!r})")
            folded_folders.add(parent)
    if total > MAX_CHARX_TOTAL:
        raise CardError(source, f"the archive unpacks to more than {MAX_CHARX_TOTAL // 2**20} MiB")
    return files


_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    ValueError,
    OSError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    KeyError,
    UnicodeDecodeError,
    struct.error,
)


def read_charx(data: bytes, source: str) -> Card:
    """A CharX archive; the zip module's many error types all become one clear CardError."""
    try:
        return _read_charx(data, source)
    except CardError:
        raise
    except _ZIP_ERRORS as exc:
        raise CardError(source, f"damaged CharX (zip) archive ({type(exc).__name__})") from None


def _read_charx(data: bytes, source: str) -> Card:
    _central_directory_bound(data, source)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = _check_members(zf.infolist(), source)
        if "card.json" not in names:
            raise CardError(source, "a CharX archive without card.json")
        if names["card.json"].file_size > MAX_JSON_TEXT:
            raise CardError(source, f"card.json is larger than {MAX_JSON_TEXT // 2**20} MiB")
        card = card_from_json(_json(zf.read(names["card.json"]), source, "card.json"), source)
        files = {n: zf.read(info) for n, info in names.items() if n != "card.json"}
    for asset in card.data.get("assets") or []:
        uri = str(asset.get("uri", ""))
        for prefix in EMBEDDED:
            if uri.startswith(prefix):
                path = posixpath.normpath(uri[len(prefix) :])
                if path not in files:
                    raise CardError(source, f"asset {uri[:120]!r} is not in the archive")
                if asset.get("type") == "icon" and asset.get("name") == "main" and card.avatar is None:
                    check_image(files[path], source, f"the icon {path[:120]!r}")
                    card.avatar = files[path]
    card.files = files
    return card


# -- YAML (text-generation-webui) --------------------------------------------------------


def read_yaml(text: bytes, source: str) -> Card:
    obj = load_yaml(text, source)
    if not isinstance(obj, dict) or "name" not in obj:
        raise CardError(source, "not a text-generation-webui character (no name)")

    def field(key: str) -> Any:
        value = obj.get(key)  # YAML reads `name: 2B` as text but `name: 007` as a number
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    data = {
        "name": field("name"),
        "description": field("context"),
        "first_mes": field("greeting"),
        "mes_example": field("example_dialogue"),
    }
    extra = {k: v for k, v in obj.items() if k not in ("name", "context", "greeting", "example_dialogue")}
    card = Card(
        normalise_data({k: v for k, v in data.items() if v is not None} | {"name": data["name"]}, source), "tgwui"
    )
    if extra:
        # Kept as JSON: keys and values YAML may type (dates, numbers, sets) become text.
        card.data["extensions"]["text-generation-webui"] = jsonable(extra)
    return card


# -- any file ----------------------------------------------------------------------------


def read_card(path: Path) -> Card:
    source = str(path)
    return read_card_bytes(read_file(path, source, MAX_CARD_FILE, "a card"), source, path.suffix.lower())


def sniff(data: bytes) -> str | None:
    """What the bytes are (png, charx, json, yaml), whatever the file is called; None if unknown."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "charx"
    head = data[:4096]
    stripped = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if stripped.startswith((b"{", b"[")):
        return "json"
    if b"\0" not in head and _YAML_NAME.search(stripped):
        return "yaml"
    return None


def read_card_bytes(data: bytes, source: str, suffix: str = "") -> Card:
    kind = sniff(data) or _BY_SUFFIX.get(suffix)
    if kind == "png":
        return read_png(data, source)
    if kind == "charx":
        return read_charx(data, source)
    if kind == "json":
        return card_from_json(_json(data, source, "the file"), source)
    if kind == "yaml":
        return read_yaml(data, source)
    raise CardError(source, "not a character card (PNG, JSON, CharX or YAML expected)")
