"""Encryption at rest for stored upstream credentials: Fernet, under FIELD_ENCRYPTION_KEYS.

MultiFernet makes key rotation a two-step operation with no downtime: put the new key first
(it encrypts from then on, every listed key still decrypts), run
`manage.py reencrypt_upstream_credentials`, then drop the old key.
"""

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


def _fernet() -> MultiFernet:
    # Built per call: cheap, and it follows settings changes (tests, key rotation on reload).
    return MultiFernet([Fernet(key) for key in settings.FIELD_ENCRYPTION_KEYS])


def encrypt(plaintext: str) -> str:
    """A Fernet token for `plaintext` under the first key."""
    return _fernet().encrypt(plaintext.encode("utf-8")).decode("ascii")


def decrypt(token: str) -> str:
    """The plaintext of a token made under any configured key.

    Raises InvalidToken when no configured key can decrypt it (the key that made it was removed).
    """
    return _fernet().decrypt(token.encode("ascii")).decode("utf-8")


def reencrypt(token: str) -> str:
    """The same plaintext, encrypted under the first key."""
    return _fernet().rotate(token.encode("ascii")).decode("ascii")


__all__ = ["InvalidToken", "decrypt", "encrypt", "reencrypt"]
