"""Images in chat messages: base64 data URLs, and an image's size read from its header alone.

Only the formats OpenAI accepts are read (PNG, JPEG, GIF, WebP). Pillow reads the header and never
decodes the pixels (no ``load()``), so a large image costs neither memory nor CPU here; a header that
claims more pixels than Pillow's ``Image.MAX_IMAGE_PIXELS`` (a decompression bomb) is refused, since
upstream would have to decode it. Failures are ValueErrors with internal messages, never shown to users.

Counting an image's tokens is ``chat.tokens.image_tokens``. ``chat/tokens.py`` reads a data URL's size
with its own tolerant few lines rather than with these: the two modules share rank 0, so neither may
import the other (docs/architecture.md), and counting takes any image it cannot read at the unknown size
instead of refusing it.

This module must not import Django: it is used from plain scripts and unit tests.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Final

from PIL import Image

__all__ = ["IMAGE_MEDIA_TYPES", "image_header", "image_size", "parse_data_url"]

# The media types OpenAI accepts for images; its non-animated-GIF rule is upstream's to apply.
IMAGE_MEDIA_TYPES: Final = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
# Pillow's names for them: only these decoders ever see a client's bytes.
_PILLOW_FORMATS: Final = ("PNG", "JPEG", "GIF", "WEBP")


def parse_data_url(url: str) -> tuple[str, bytes]:
    """Return (media type, bytes) of a base64 ``data:`` URL of an image.

    ``data:<media type>[;<parameter>...];base64,<data>``. The media type is returned lowercased and is one
    of ``IMAGE_MEDIA_TYPES``. Raises ValueError for anything else: not a data URL, no comma, not base64,
    another media type, invalid base64 (whitespace included) or no data.
    """
    header, comma, payload = url.partition(",")
    if not comma or header[:5].lower() != "data:":
        raise ValueError("not a data: URL")
    media_type, *parameters = (part.strip() for part in header[5:].lower().split(";"))
    if not parameters or parameters[-1] != "base64":
        raise ValueError("the data: URL is not base64")
    if media_type not in IMAGE_MEDIA_TYPES:
        raise ValueError(f"media type {media_type!r} is not one of {sorted(IMAGE_MEDIA_TYPES)}")
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error as error:
        raise ValueError(f"the data: URL's base64 is invalid: {error}") from None
    if not data:
        raise ValueError("the data: URL holds no data")
    return media_type, data


def image_size(data: bytes) -> tuple[int, int]:
    """Return (width, height) of a PNG, JPEG, GIF or WebP image, read from its header alone.

    Raises ValueError if Pillow cannot read the header as one of those formats, or if the header claims
    more than ``Image.MAX_IMAGE_PIXELS`` pixels. The pixels are never decoded.
    """
    _media_type, width, height = image_header(data)
    return width, height


def image_header(data: bytes) -> tuple[str, int, int]:
    """Return (media type, width, height) of a PNG, JPEG, GIF or WebP image, as its header says (not
    as whoever sent it claims). Raises ValueError as ``image_size`` does."""
    try:
        with Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS) as image:
            width, height = image.size
            media_type = Image.MIME[image.format]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow refuses more than twice MAX_IMAGE_PIXELS itself (DecompressionBombError), and warns above it
        # (DecompressionBombWarning, raised where warnings are errors); its format plugins raise OSError,
        # SyntaxError or ValueError on a malformed header.
        raise ValueError(f"not a readable PNG, JPEG, GIF or WebP image: {error}") from None
    # Between MAX_IMAGE_PIXELS and twice that, Pillow only warns: refused here all the same.
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        raise ValueError(f"the image claims {width}x{height} pixels, more than {Image.MAX_IMAGE_PIXELS}")
    return media_type, width, height
