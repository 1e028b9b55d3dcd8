"""`manage.py prune_usage --older-than DAYS`: delete old usage records; the daily roll-ups stay."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat.usage.services import usage_prune


class Command(BaseCommand):
    help = "Delete usage records older than DAYS days. Daily roll-ups (and so all reports) are kept."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", type=int, required=True, metavar="DAYS")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["older_than"] < 1:
            raise CommandError("--older-than must be at least 1 day.")
        deleted, cutoff = usage_prune(older_than_days=options["older_than"])
        self.stdout.write(
            f"Deleted {deleted} usage record(s) from before {cutoff:%Y-%m-%d %H:%M} UTC; daily roll-ups kept."
        )
