"""`manage.py revoke_api_key KEY_ID`: the key stops working on its very next request."""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from chat.keys.services import api_key_revoke
from chat.management.options import api_key_from_argument


class Command(BaseCommand):
    help = "Revoke a client API key by its key id (see list_api_keys)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key_id")

    def handle(self, *args: Any, **options: Any) -> None:
        api_key = api_key_from_argument(options["key_id"])
        if api_key_revoke(api_key=api_key, actor="command"):
            self.stdout.write(f"Revoked API key {api_key.key_id} ('{api_key.name}').")
        else:
            self.stdout.write(f"API key {api_key.key_id} ('{api_key.name}') was already revoked.")
