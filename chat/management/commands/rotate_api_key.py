"""`manage.py rotate_api_key KEY_ID`: a new secret for the same key; the new key is the last line."""

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat.keys.services import api_key_rotate
from chat.management.options import api_key_from_argument
from llmserver.http.errors import ApiError


class Command(BaseCommand):
    help = (
        "Rotate a client API key: it keeps its id, sessions and usage, and gets a new secret. "
        "The old secret stops at once, or after --grace-minutes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key_id")
        parser.add_argument(
            "--grace-minutes", type=int, default=0,
            help="Keep the old secret working this long, so clients can switch (default: 0).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["grace_minutes"] < 0:
            raise CommandError("--grace-minutes must not be negative.")
        api_key = api_key_from_argument(options["key_id"])
        try:
            raw_key = api_key_rotate(
                api_key=api_key, actor="command", grace=timedelta(minutes=options["grace_minutes"])
            )
        except ApiError as error:
            raise CommandError(str(error)) from None
        old = (
            f"the old key keeps working for {options['grace_minutes']} minutes"
            if options["grace_minutes"] else "the old key has stopped working"
        )
        self.stdout.write(f"Rotated API key {api_key.key_id} ('{api_key.name}'); {old}. Store the new key now:")
        self.stdout.write(raw_key)
