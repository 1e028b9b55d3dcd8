"""`manage.py reencrypt_upstream_credentials`: re-encrypt stored upstream keys under the newest key."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from chat.upstreams import crypto
from chat.upstreams.services import upstream_credentials_reencrypt


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored upstream credential under the first key of FIELD_ENCRYPTION_KEYS. "
        "Run it after putting a new key first, then remove the old key."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            count = upstream_credentials_reencrypt()
        except crypto.InvalidToken:
            raise CommandError(
                "A stored credential cannot be decrypted with any key in FIELD_ENCRYPTION_KEYS: "
                "put back the key it was encrypted with, then run this again."
            ) from None
        self.stdout.write(f"Re-encrypted {count} upstream credential(s) under the first FIELD_ENCRYPTION_KEYS key.")
