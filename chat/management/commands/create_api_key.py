"""`manage.py create_api_key --name NAME [...]`: issue a client key; the key is the last line."""

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from chat.keys.services import api_key_create
from chat.management.options import add_limit_arguments, limit_changes
from chat.models import ApiKey, UpstreamCredential
from llmserver.http.errors import ApiError

# A hundred years: a date further off is not an expiry (and past the year 9999, not a date).
MAX_EXPIRES_IN_DAYS = 36_500


class Command(BaseCommand):
    help = "Create a client API key. The key is printed once, as the last line; only its hash is stored."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True, help="Who or what the key is for, e.g. 'mobile-app'.")
        parser.add_argument(
            "--scopes", nargs="+", choices=ApiKey.Scope.values, default=[ApiKey.Scope.CHAT],
            help="What the key may do (default: chat).",
        )
        parser.add_argument("--expires-in", type=int, metavar="DAYS", help="Expire after this many days.")
        parser.add_argument("--models", nargs="+", default=[], help="Allow only these models (default: all).")
        parser.add_argument("--owner", help="Username of the Django user who owns the key.")
        parser.add_argument("--upstream", metavar="CREDENTIAL", help="Name of a stored upstream credential to use.")
        add_limit_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"].strip()
        if not name:
            raise CommandError("--name must not be empty.")
        expires_in = options["expires_in"]
        if expires_in is not None and not 0 < expires_in <= MAX_EXPIRES_IN_DAYS:
            raise CommandError(f"--expires-in must be a number of days from 1 to {MAX_EXPIRES_IN_DAYS}.")
        owner = None
        if options["owner"]:
            owner = get_user_model().objects.filter(username=options["owner"]).first()
            if owner is None:
                raise CommandError(f"No user named '{options['owner']}' exists.")
        credential = None
        if options["upstream"]:
            credential = UpstreamCredential.objects.filter(name=options["upstream"]).first()
            if credential is None:
                raise CommandError(f"No upstream credential named '{options['upstream']}' exists.")
        try:
            api_key, raw_key = api_key_create(
                name=name,
                actor="command",
                scopes=options["scopes"],
                allowed_models=options["models"],
                expires_at=timezone.now() + timedelta(days=expires_in) if expires_in else None,
                owner=owner,
                upstream_credential=credential,
                **limit_changes(options),
            )
        except ApiError as error:
            raise CommandError(str(error)) from None
        expiry = f", expires {api_key.expires_at:%Y-%m-%d %H:%M} UTC" if api_key.expires_at else ""
        self.stdout.write(
            f"Created API key {api_key.key_id} for '{api_key.name}' (scopes: {', '.join(api_key.scopes)}{expiry}). "
            "Store it now: it is not shown again."
        )
        self.stdout.write(raw_key)
