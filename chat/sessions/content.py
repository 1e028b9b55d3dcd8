"""What a stored message holds beyond its text, and its three shapes: as the client sent it (checked,
images decoded), as it is stored, and as it is sent upstream. Pure functions, no database.

A message is one of:
- a plain text (`content` only): every message stored before tools and images existed, and most since;
- content parts (`parts`): texts and images in order. An image sent as a data URL is stored once per
  key by its SHA-256 (chat/sessions/images.py) and referred to by it; an http(s) image is stored as
  its URL (the server never fetches it);
- an assistant's tool calls (`tool_calls`), with or without text;
- a tool's result (role `tool`, `tool_call_id` naming the call it answers).

Stored parts: `{"type": "text", "text"}`, `{"type": "image", "sha256", "media_type", "detail", "width",
"height", "bytes"}` and `{"type": "image_url", "url", "detail"}`. The image's size is kept in the part so that
the message's tokens can be counted again (under another model's encoding) without reading the image.
"""

import base64
import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.utils.translation import gettext as _

from chat import images, tokens

IMAGE_DETAILS = ("auto", "low", "high")
MAX_IMAGE_URL_CHARS = 8192
# The most images one message may carry (each is decoded and checked while the request is read).
MAX_IMAGES_PER_MESSAGE = 16


class ContentInvalid(ValueError):
    """A part of a message that cannot be stored, with the sentence that says why (translated)."""


@dataclass(frozen=True)
class ImageInput:
    """An image of a new message: a data URL's bytes, checked, or an http(s) URL as it is."""

    detail: str = "auto"
    url: str = ""
    data: bytes = b""
    media_type: str = ""
    width: int = 0
    height: int = 0

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


# A new message's content: texts and images, in order.
ContentPart = str | ImageInput


def image_input(url: Any, detail: Any = "auto") -> ImageInput:
    """An image part as a client sends it: a data URL (decoded, checked to be an image no larger
    than CHAT_MAX_IMAGE_BYTES) or an http(s) URL. Raises ContentInvalid saying what is wrong."""
    if detail is None:
        detail = "auto"
    if detail not in IMAGE_DETAILS:
        raise ContentInvalid(_("An image's detail is one of: auto, low, high."))
    if not isinstance(url, str) or not url:
        raise ContentInvalid(_("An image is given by its URL: an http(s) URL or a data URL."))
    if url.startswith(("https://", "http://")):
        try:
            host = urlsplit(url).hostname
        except ValueError:  # a malformed address, such as an unclosed IPv6 bracket
            host = None
        if not host or any(ord(c) < 0x21 or 0x7F <= ord(c) <= 0x9F for c in url):
            raise ContentInvalid(_("An image URL must name a host, and contain no spaces or control characters."))
        if len(url) > MAX_IMAGE_URL_CHARS:
            limit = {"limit": MAX_IMAGE_URL_CHARS}
            raise ContentInvalid(_("An image URL may have at most %(limit)d characters.") % limit)
        return ImageInput(detail=detail, url=url)
    if not url.startswith("data:"):
        raise ContentInvalid(_("An image is given by its URL: an http(s) URL or a data URL."))
    try:
        _claimed_type, data = images.parse_data_url(url)
    except ValueError:
        raise ContentInvalid(
            _("An image data URL must be data:image/png, jpeg, gif or webp;base64, then the image in base64.")
        ) from None
    if len(data) > settings.CHAT_MAX_IMAGE_BYTES:
        raise ContentInvalid(
            _("An image may have at most %(limit)d bytes; this one has %(size)d.")
            % {"limit": settings.CHAT_MAX_IMAGE_BYTES, "size": len(data)}
        )
    try:
        # The type the image's own header says: stored, served and sent upstream as what it is.
        media_type, width, height = images.image_header(data)
    except ValueError:
        raise ContentInvalid(_("An image data URL does not hold an image that can be read.")) from None
    return ImageInput(detail=detail, data=data, media_type=media_type, width=width, height=height)


def parts_text(parts: list[ContentPart] | list[dict[str, Any]]) -> str:
    """The texts of a message's parts, joined by a blank line: its `content` for listing and search."""
    texts = [
        part if isinstance(part, str) else part.get("text", "") for part in parts if not isinstance(part, ImageInput)
    ]
    return "\n\n".join(text for text in texts if text)


def stored_parts(parts: list[ContentPart]) -> list[dict[str, Any]]:
    """A new message's parts as they are stored (its data-URL images referred to by hash)."""
    stored: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, str):
            stored.append({"type": "text", "text": part})
        elif part.url:
            stored.append({"type": "image_url", "url": part.url, "detail": part.detail})
        else:
            stored.append({
                "type": "image", "sha256": part.sha256, "media_type": part.media_type, "detail": part.detail,
                "width": part.width, "height": part.height, "bytes": len(part.data),
            })
    return stored


def stored_image_hashes(parts: list[dict[str, Any]] | None) -> list[str]:
    return [part["sha256"] for part in parts or () if part["type"] == "image"]


def stored_image_bytes(parts: list[dict[str, Any]] | None) -> int:
    """What the message's stored images weigh, sent upstream again each time it is replayed."""
    return sum(part.get("bytes", 0) for part in parts or () if part["type"] == "image")


def message_tokens(
    *, role: str, content: str, model: str, parts: list[dict[str, Any]] | None = None,
    tool_calls: list[dict[str, Any]] | None = None, tool_call_id: str = "", name: str = "",
) -> int:
    """The tokens a stored message adds to a prompt for `model` (see chat/tokens.py for the rules,
    and where an upstream's own count differs). A plain text message is counted as it always was."""
    if parts is None and not tool_calls and not tool_call_id and not name:
        return tokens.count_message_tokens(role=role, content=content, model=model)
    message: dict[str, Any] = {"role": role, "content": content}
    image_tokens = 0
    if parts is not None:
        message["content"] = [part for part in parts if part["type"] == "text"]
        for part in parts:
            if part["type"] == "image":
                image_tokens += tokens.image_tokens(
                    width=part["width"], height=part["height"], detail=part["detail"], model=model
                )
            elif part["type"] == "image_url":
                image_tokens += tokens.image_tokens(width=None, height=None, detail=part["detail"], model=model)
    if tool_calls:
        message["tool_calls"] = tool_calls
        message["content"] = message["content"] or None
    if tool_call_id:
        message["tool_call_id"] = tool_call_id
    if name:
        message["name"] = name
    return tokens.count_openai_message_tokens(message, model=model) + image_tokens


def data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def upstream_message(
    *, role: str, content: str, parts: list[dict[str, Any]] | None = None,
    tool_calls: list[dict[str, Any]] | None = None, tool_call_id: str = "", name: str = "",
    image_urls: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A stored message in OpenAI's wire format. `image_urls`: the data URL of each stored image of
    its parts, by hash (chat/sessions/images.py reads them)."""
    message: dict[str, Any] = {"role": role, "content": content}
    if parts is not None:
        message["content"] = [_upstream_part(part, image_urls or {}) for part in parts]
    if tool_calls:
        message["tool_calls"] = tool_calls
        if not content and parts is None:
            message["content"] = None
    if tool_call_id:
        message["tool_call_id"] = tool_call_id
    if name:
        message["name"] = name
    return message


def _upstream_part(part: dict[str, Any], image_urls: dict[str, str]) -> dict[str, Any]:
    if part["type"] == "text":
        return part
    url = part["url"] if part["type"] == "image_url" else image_urls[part["sha256"]]
    return {"type": "image_url", "image_url": {"url": url, "detail": part["detail"]}}
