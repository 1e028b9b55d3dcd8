"""The API's one request parser: JSON whose every string can be stored.

JSON can carry text that no database column holds: `\\u0000` (PostgreSQL refuses NUL in text
and the write fails with a 500) and a lone `\\ud800` (half of a surrogate pair, not Unicode:
encoding it as UTF-8 fails, on SQLite as on PostgreSQL). DRF's CharField refuses both, but not
every string goes through one (dictionary keys, OpenAI-style message parts, pass-through
parameters), so the whole body is checked once here, before any view sees it, and the error
names where the text is.
"""

from typing import Any

from rest_framework.parsers import JSONParser

from llmserver.errors import UnstorableText


def unstorable_text_at(value: Any, path: str = "") -> str | None:
    """The JSON path of the first string (value or key) in `value` that cannot be stored, or None."""
    if isinstance(value, str):
        return None if _is_storable(value) else path or "$"
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if not _is_storable(key):
                return path or "$"
            found = unstorable_text_at(item, where)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = unstorable_text_at(item, f"{path}[{index}]")
            if found:
                return found
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


class StorableJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        data = super().parse(stream, media_type, parser_context)
        where = unstorable_text_at(data)
        if where:
            # An unstorable key is reported by its parent's path, so the path itself is always storable.
            raise UnstorableText(details={"field": where})
        return data
