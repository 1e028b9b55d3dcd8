"""`manage.py update_api_key KEY_ID [--rpm N] [--tokens-per-day N] [--monthly-budget USD] [...]`."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat.keys.services import api_key_update
from chat.management.options import add_limit_arguments, api_key_from_argument, limit_changes
from chat.models import ApiKey
from llmserver.http.errors import ApiError


class Command(BaseCommand):
    help = "Change a client key's name, scopes, allowed models or limits. Options not given are left as they are."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key_id")
        parser.add_argument("--name")
        parser.add_argument("--scopes", nargs="+", choices=ApiKey.Scope.values)
        parser.add_argument("--models", nargs="*", help="Allowed models; give none to allow every model.")
        add_limit_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        api_key = api_key_from_argument(options["key_id"])
        changes = limit_changes(options)
        if options["name"] is not None:
            changes["name"] = options["name"]
        if options["scopes"] is not None:
            changes["scopes"] = options["scopes"]
        if options["models"] is not None:
            changes["allowed_models"] = options["models"]
        if not changes:
            raise CommandError("Nothing to change: give at least one option (see --help).")
        try:
            api_key_update(api_key=api_key, actor="command", changes=changes)
        except ApiError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"Updated API key {api_key.key_id} ('{api_key.name}'): {', '.join(sorted(changes))}.")
