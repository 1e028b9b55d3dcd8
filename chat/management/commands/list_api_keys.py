"""`manage.py list_api_keys`: every client key as a table. Never a secret."""

from typing import Any

from django.core.management.base import BaseCommand

from chat.keys.selectors import api_key_list

COLUMNS = ("KEY ID", "NAME", "KEY", "SCOPES", "STATUS", "LAST USED", "TOKENS", "CREATED")


def _when(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M}" if value else "-"


class Command(BaseCommand):
    help = "List client API keys: id, name, masked key, scopes, status, last use and tokens."

    def handle(self, *args: Any, **options: Any) -> None:
        keys = list(api_key_list())
        rows = [
            (
                key.key_id, key.name, key.masked, ",".join(key.scopes), key.status,
                _when(key.last_used_at), str(key.total_tokens), _when(key.created_at),
            )
            for key in keys
        ]
        widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
        for row in [COLUMNS, *rows]:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        active = sum(1 for key in keys if key.status == "active")
        self.stdout.write(f"{len(keys)} keys, {active} active.")
