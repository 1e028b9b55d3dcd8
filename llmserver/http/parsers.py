"""The API's one request parser: JSON whose every string can be stored.

JSON can carry text that no database column holds: `\\u0000` (PostgreSQL refuses NUL in text
and the write fails with a 500) and a lone `\\ud800` (half of a surrogate pair, not Unicode:
encoding it as UTF-8 fails, on SQLite as on PostgreSQL). DRF's CharField refuses both, but not
every string goes through one (dictionary keys, OpenAI-style message parts, pass-through
parameters), so the whole body is checked once here, before any view sees it, and the error
names where the text is.
"""

import io
import re
from typing import Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from llmserver.http.errors import UnstorableText


def unstorable_text_at(value: Any) -> str | None:
    """The JSON path of the first string (value or key) in `value` that cannot be stored, or None.
    A loop over a stack, not recursion: a body may nest as deep as the JSON parser allowed."""
    pending: list[tuple[Any, str]] = [(value, "")]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str):
            if not _is_storable(item):
                return path or "$"
        elif isinstance(item, dict):
            for key in item:
                if not _is_storable(key):
                    return path or "$"
            # Reversed onto the stack, so that the first field is looked at first.
            pending.extend((child, f"{path}.{key}" if path else key) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            pending.extend((child, f"{path}[{index}]") for index, child in reversed(list(enumerate(item))))
    return None


def storable(text: str) -> str:
    """`text` with what cannot be stored replaced: NUL by U+FFFD, a lone surrogate by '?'. For
    text the server did not get from its client (a model's answer), which must not fail a turn."""
    if _is_storable(text):
        return text
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _is_storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Strict JSON can carry a NUL or a surrogate only as an escape (a raw control character is not
# JSON, raw surrogate bytes are not UTF-8): without one of these in the raw body, there is no
# string to look at. (A false alarm, like an escaped backslash before "u0000", only costs the walk.)
_MAY_HOLD_UNSTORABLE_TEXT = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


class StorableJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        raw = stream.read() if stream is not None else b""
        try:
            data = super().parse(io.BytesIO(raw), media_type, parser_context)
        except RecursionError:
            # Arrays nested thousands deep: Python's JSON decoder runs out of stack (it is not a
            # ValueError, so DRF would let it through as a 500).
            raise ParseError() from None
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        # The escapes are looked for as UTF-8 bytes; a body in another charset is always walked.
        if encoding.lower().replace("-", "") != "utf8" or _MAY_HOLD_UNSTORABLE_TEXT.search(raw):
            where = unstorable_text_at(data)
            if where:
                # An unstorable key is reported by its parent's path, so the path itself is always storable.
                raise UnstorableText(details={"field": where})
        return data
