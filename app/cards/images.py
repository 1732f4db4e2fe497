"""Avatars from strangers: identified from their header, measured before a pixel is decoded.

A PNG is checked by walking its chunks (app.cards.png_chunks: lengths, CRCs, the
header), which is all a PNG card needs, since its image is kept byte for byte. Other
images go to Pillow, whose `Image.open` reads the header without decoding, so the
size is known first; such an image is decoded only when it must become a PNG (a JPEG
or WebP icon exported as a PNG card), and only within `MAX_DECODE_PIXELS`. Only the
formats avatars come in are tried: Pillow knows dozens, some with heavy or external
decoders (EPS runs Ghostscript), and none of those is an avatar.
"""

from __future__ import annotations

import io
from typing import Any

from app.cards.errors import MAX_DECODE_PIXELS, MAX_IMAGE_PIXELS, CardError
from app.cards.png_chunks import PNG_SIGNATURE, image_size, iter_chunks

FORMATS = ("JPEG", "WEBP", "GIF")  # besides PNG
# PNG stores these modes as they are; others (CMYK, YCbCr, I;16…) are converted first.
_PNG_MODES = {"1", "L", "LA", "I", "P", "RGB", "RGBA"}


def _bounded(width: int, height: int, source: str, what: str, limit: int) -> None:
    if width * height > limit:
        raise CardError(source, f"{what} is {width}×{height}, larger than the {limit:,} pixels allowed")


def _open(data: bytes, source: str, what: str) -> Any:
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = im.size
    except Image.DecompressionBombError:  # Pillow's own bound, above ours: it read the size
        raise CardError(source, f"{what} is larger than the {MAX_DECODE_PIXELS:,} pixels allowed") from None
    except Exception as exc:  # Pillow raises many types for what is not an image
        raise CardError(source, f"{what} is not an image (PNG, JPEG, WebP or GIF; {type(exc).__name__})") from None
    if width <= 0 or height <= 0:
        im.close()
        raise CardError(source, f"{what} has no pixels ({width}×{height})")
    return im


def check_png(data: bytes, source: str, what: str = "the image") -> None:
    width, height = image_size(iter_chunks(data, source), source)
    _bounded(width, height, source, what, MAX_IMAGE_PIXELS)


def check_image(data: bytes, source: str, what: str = "the image") -> str:
    """The image's format, once it is known to be one an avatar may be, and not too large.

    A PNG may be as large as `MAX_IMAGE_PIXELS` (it is never decoded here); anything else
    will have to be decoded to become a PNG, so `MAX_DECODE_PIXELS` applies to it.
    """
    if data.startswith(PNG_SIGNATURE):
        check_png(data, source, what)
        return "PNG"
    with _open(data, source, what) as im:
        _bounded(*im.size, source, what, MAX_DECODE_PIXELS)
        _decode(im, source, what)  # once now, so that exporting it later cannot fail
        return str(im.format)


def _decode(im: Any, source: str, what: str) -> None:
    try:
        im.load()
    except MemoryError:
        raise
    except Exception as exc:  # truncated data, a broken stream: Pillow's many types
        raise CardError(source, f"{what} cannot be decoded ({type(exc).__name__})") from None


def as_png(data: bytes, source: str, what: str = "the image") -> bytes:
    """`data` (JPEG, WebP, GIF) as a PNG of its first frame, decoded within the bound."""
    with _open(data, source, what) as im:
        width, height = im.size
        _bounded(width, height, source, what, MAX_DECODE_PIXELS)
        _decode(im, source, what)
        try:
            frame = im if im.mode in _PNG_MODES else im.convert("RGBA" if "A" in im.mode else "RGB")
            buf = io.BytesIO()
            # zlib's default level takes seconds on a large photo; level 1 a fraction of that.
            frame.save(buf, "PNG", compress_level=6 if width * height <= 2**22 else 1)
        except MemoryError:
            raise
        except Exception as exc:
            raise CardError(source, f"{what} cannot be decoded ({type(exc).__name__})") from None
    return buf.getvalue()


def blank_png(size: tuple[int, int] = (400, 600)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (70, 62, 98)).save(buf, "PNG")
    return buf.getvalue()
