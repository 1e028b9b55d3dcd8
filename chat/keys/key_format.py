"""The client key format: make, parse and hash keys. Pure functions, no database.

A key reads `llms_<key_id>_<secret><checksum>`:
- `llms_` says what it is (secret scanners and people can recognise it);
- `key_id`, 12 base62 characters, is public: it finds the key's row with one indexed lookup;
- `secret`, 40 base62 characters (about 238 random bits), is never stored: only its keyed hash is;
- `checksum`, 6 base62 characters of CRC32 over everything before it, rejects a mistyped or
  truncated key without touching the database.
"""

import re
import secrets
import string
import zlib
from dataclasses import dataclass

from django.utils.crypto import constant_time_compare, salted_hmac

KEY_PREFIX = "llms_"
KEY_ID_LENGTH = 12
SECRET_LENGTH = 40
CHECKSUM_LENGTH = 6
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_KEY_PATTERN = re.compile(
    rf"^{KEY_PREFIX}(?P<key_id>[0-9A-Za-z]{{{KEY_ID_LENGTH}}})_"
    rf"(?P<secret>[0-9A-Za-z]{{{SECRET_LENGTH}}})(?P<checksum>[0-9A-Za-z]{{{CHECKSUM_LENGTH}}})$"
)
# The salt separates this HMAC from every other use of SECRET_KEY. Changing SECRET_KEY
# invalidates every client key: README.md and docs/operations.md say so.
_HMAC_SALT = "llmserver.chat.api_key"


@dataclass(frozen=True)
class ParsedKey:
    key_id: str
    secret: str


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(length))


def _checksum(body: str) -> str:
    value = zlib.crc32(body.encode("ascii"))
    digits = []
    for _ in range(CHECKSUM_LENGTH):
        value, remainder = divmod(value, 62)
        digits.append(_BASE62[remainder])
    return "".join(reversed(digits))


def generate_key(*, key_id: str | None = None) -> tuple[str, ParsedKey]:
    """A new random key, as the full string to show once and its parsed parts. Rotation passes
    the existing `key_id` and gets a new secret under it."""
    key_id = key_id or _random_base62(KEY_ID_LENGTH)
    secret = _random_base62(SECRET_LENGTH)
    body = f"{KEY_PREFIX}{key_id}_{secret}"
    return body + _checksum(body), ParsedKey(key_id=key_id, secret=secret)


def parse_key(raw: str) -> ParsedKey | None:
    """The key's parts, or None when it is not a well-formed key with a valid checksum."""
    match = _KEY_PATTERN.match(raw)
    if match is None:
        return None
    body = raw[: -CHECKSUM_LENGTH]
    if not constant_time_compare(_checksum(body), match["checksum"]):
        return None
    return ParsedKey(key_id=match["key_id"], secret=match["secret"])


def hash_secret(secret: str) -> str:
    """The keyed hash stored for a secret: HMAC-SHA256 under a key derived from SECRET_KEY.

    A plain fast hash is right for a high-entropy random secret (no password stretching needed);
    the key means a leaked database alone is not enough to test guesses offline.
    """
    return salted_hmac(_HMAC_SALT, secret, algorithm="sha256").hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented secret with the stored hash."""
    return constant_time_compare(hash_secret(secret), stored_hash)
