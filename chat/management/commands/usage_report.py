"""`manage.py usage_report [--days N] [--key ID]`: usage per day and model, from the roll-ups."""

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat.management.options import api_key_from_argument
from chat.usage import selectors

# Ten years of roll-ups: a longer period is a typo (and past the year 1, not a date).
MAX_DAYS = 3660
COLUMNS = ("DAY", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL", "COST (USD)")


class Command(BaseCommand):
    help = "Print requests, tokens and cost per day and model for the last N days (all keys, or one)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=7, help="How many days back, today included (default 7).")
        parser.add_argument("--key", metavar="KEY_ID", help="Only this key (see list_api_keys).")

    def handle(self, *args: Any, **options: Any) -> None:
        if not 1 <= options["days"] <= MAX_DAYS:
            raise CommandError(f"--days must be from 1 to {MAX_DAYS}.")
        api_key = api_key_from_argument(options["key"]) if options["key"] else None
        day_to = datetime.now(dt_timezone.utc).date()
        day_from = day_to - timedelta(days=options["days"] - 1)
        report = selectors.usage_report(api_key=api_key, day_from=day_from, day_to=day_to, group_by="day_model")
        rows = [
            (str(g["day"]), g["model"], str(g["requests"]), str(g["prompt_tokens"]), str(g["completion_tokens"]),
             str(g["total_tokens"]), f"{g['cost']:.6f}")
            for g in report["groups"]
        ]
        totals = report["totals"]
        rows.append(("TOTAL", "", str(totals["requests"]), str(totals["prompt_tokens"]),
                     str(totals["completion_tokens"]), str(totals["total_tokens"]), f"{totals['cost']:.6f}"))
        widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
        for row in [COLUMNS, *rows]:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        scope = f"key {api_key.key_id}" if api_key else "all keys"
        self.stdout.write(f"Usage of {scope} from {day_from} to {day_to} (UTC).")
