"""Reading a character card from any format users have: PNG/APNG, JSON (V1, V2, V3,
Pygmalion/Gradio), CharX and text-generation-webui YAML."""

from __future__ import annotations

import base64
import binascii
import copy
import io
import json
import posixpath
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

from app.cards.card import V1_FIELDS, Card, normalise_data
from app.cards.errors import (
    MAX_CARD_FILE,
    MAX_CHARX_ENTRIES,
    MAX_CHARX_TOTAL,
    MAX_COMPRESSION_RATIO,
    MAX_IMAGE_PIXELS,
    MAX_JSON_TEXT,
    CardError,
)
from app.cards.png_chunks import PNG_SIGNATURE, iter_chunks, text_chunks

EMBEDDED = ("embeded://", "embedded://")  # the spec's spelling, and the one people type


def _json(text: bytes | str, source: str, what: str) -> Any:
    if len(text) > MAX_JSON_TEXT:
        raise CardError(source, f"{what} is larger than {MAX_JSON_TEXT // 2**20} MiB")
    try:
        return json.loads(text)
    except UnicodeDecodeError:
        raise CardError(source, f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise CardError(source, f"{what} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise CardError(source, f"{what} is nested too deeply") from None


def card_from_json(obj: Any, source: str, avatar: bytes | None = None) -> Card:
    if not isinstance(obj, dict):
        raise CardError(source, "a card must be a JSON object")
    spec = obj.get("spec")
    top = {k: copy.deepcopy(v) for k, v in obj.items() if k not in ("spec", "spec_version", "data")}
    if spec in ("chara_card_v2", "chara_card_v3"):
        for key in V1_FIELDS:  # V1 mirrors at the top are written again from the data on export
            top.pop(key, None)
        return Card(normalise_data(obj.get("data"), source), spec, top, avatar)
    if isinstance(spec, str) and spec:
        raise CardError(source, f"unknown card spec {spec!r}")
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


def _check_image(data: bytes, source: str) -> None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Exception as exc:  # Pillow raises many types for broken images
        raise CardError(source, f"the image cannot be read ({type(exc).__name__})") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise CardError(source, f"the image is {width}×{height}, larger than the {MAX_IMAGE_PIXELS} pixels allowed")


def read_png(data: bytes, source: str) -> Card:
    chunks = iter_chunks(data, source)
    if not chunks or chunks[0].type != b"IHDR" or len(chunks[0].data) < 8:
        raise CardError(source, "damaged PNG (no image header)")
    width, height = struct.unpack(">II", chunks[0].data[:8])
    if width * height > MAX_IMAGE_PIXELS:
        raise CardError(source, f"the image is {width}×{height}, larger than the {MAX_IMAGE_PIXELS} pixels allowed")
    texts = text_chunks(chunks, source)
    _check_image(data, source)
    for key in ("ccv3", "chara"):  # V3 wins when both are there
        if key in texts:
            try:
                raw = base64.b64decode(b"".join(texts[key].split()), validate=True)
            except (binascii.Error, ValueError):
                raise CardError(source, f"the {key!r} chunk is not valid base64") from None
            return card_from_json(_json(raw, source, f"the {key!r} chunk"), source, avatar=data)
    raise CardError(source, "a PNG without a character card in it (no 'chara' or 'ccv3' text chunk)")


def _safe_member(name: str) -> bool:
    norm = posixpath.normpath(name.replace("\\", "/"))
    return not (norm.startswith(("/", "../")) or norm == ".." or ":" in norm.split("/")[0])


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
    zf = zipfile.ZipFile(io.BytesIO(data))
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_CHARX_ENTRIES:
            raise CardError(source, f"the archive has more than {MAX_CHARX_ENTRIES} entries")
        total = 0
        for info in infos:
            if not _safe_member(info.filename):
                raise CardError(source, f"the archive entry {info.filename!r} points outside the card")
            total += info.file_size
            if info.compress_size and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO:
                raise CardError(source, f"the archive entry {info.filename!r} looks like a zip bomb")
        if total > MAX_CHARX_TOTAL:
            raise CardError(source, f"the archive unpacks to more than {MAX_CHARX_TOTAL // 2**20} MiB")
        names = {posixpath.normpath(i.filename): i for i in infos if not i.is_dir()}
        if "card.json" not in names:
            raise CardError(source, "a CharX archive without card.json")

        def read(name: str) -> bytes:
            return zf.read(names[name])

        card = card_from_json(_json(read("card.json"), source, "card.json"), source)
        files = {n: read(n) for n in names if n != "card.json"}
    for asset in card.data.get("assets") or []:
        uri = str(asset.get("uri", ""))
        for prefix in EMBEDDED:
            if uri.startswith(prefix):
                path = posixpath.normpath(uri[len(prefix) :])
                if path not in files:
                    raise CardError(source, f"asset {uri!r} is not in the archive")
                if asset.get("type") == "icon" and asset.get("name") == "main" and card.avatar is None:
                    card.avatar = files[path]
    card.files = files
    return card


def read_yaml(text: bytes, source: str) -> Card:
    import yaml

    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise CardError(source, f"not valid YAML{where}") from None
    if not isinstance(obj, dict) or "name" not in obj:
        raise CardError(source, "not a text-generation-webui character (no name)")
    data = {
        "name": obj.get("name"),
        "description": obj.get("context"),
        "first_mes": obj.get("greeting"),
        "mes_example": obj.get("example_dialogue"),
    }
    extra = {k: v for k, v in obj.items() if k not in ("name", "context", "greeting", "example_dialogue")}
    card = Card(
        normalise_data({k: v for k, v in data.items() if v is not None} | {"name": data["name"]}, source), "tgwui"
    )
    if extra:
        # Kept as JSON: keys and values YAML may type (dates, numbers) become text.
        card.data["extensions"]["text-generation-webui"] = json.loads(
            json.dumps({str(k): v for k, v in extra.items()}, default=str)
        )
    return card


def read_card(path: Path) -> Card:
    source = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_CARD_FILE:
            raise CardError(source, f"larger than the {MAX_CARD_FILE // 2**20} MiB a card may be")
        data = path.read_bytes()
    except FileNotFoundError:
        raise CardError(source, "file not found") from None
    except IsADirectoryError:
        raise CardError(source, "is a folder, not a card") from None
    except OSError as exc:
        raise CardError(source, f"cannot read: {exc.strerror}") from None
    return read_card_bytes(data, source, path.suffix.lower())


def read_card_bytes(data: bytes, source: str, suffix: str = "") -> Card:
    if data.startswith(PNG_SIGNATURE):
        return read_png(data, source)
    if data.startswith(b"PK\x03\x04") or suffix == ".charx":
        return read_charx(data, source)
    stripped = data.lstrip()
    if stripped.startswith(b"{") or suffix == ".json":
        return card_from_json(_json(data, source, "the file"), source)
    if suffix in (".yaml", ".yml") or b":" in data[:4096]:
        return read_yaml(data, source)
    raise CardError(source, "not a character card (PNG, JSON, CharX or YAML expected)")
