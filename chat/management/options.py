"""What several key commands share: finding the key an id names, and the limit options."""

from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import CommandError, CommandParser

from chat.exceptions import ApiKeyNotFound
from chat.keys.selectors import api_key_get
from chat.models import ApiKey


def api_key_from_argument(key_id: str) -> ApiKey:
    """The key with this id, or the one-sentence error (exit status 1) every command gives."""
    try:
        return api_key_get(key_id=key_id)
    except ApiKeyNotFound:
        raise CommandError(f"No API key with id '{key_id}' exists; list_api_keys shows the ids.") from None


def add_limit_arguments(parser: CommandParser) -> None:
    parser.add_argument("--rpm", type=int, metavar="N", help="Chat requests per minute (0: unlimited).")
    parser.add_argument("--tokens-per-day", type=int, metavar="N", help="Tokens per UTC day (0: unlimited).")
    parser.add_argument("--monthly-budget", metavar="USD", help="Cost budget per UTC month in USD (0: none).")


def limit_changes(options: dict[str, Any]) -> dict[str, Any]:
    """The limits given on the command line, as ApiKey fields; options not given are left out."""
    changes: dict[str, Any] = {}
    for option, field in [("rpm", "requests_per_minute"), ("tokens_per_day", "tokens_per_day")]:
        if options.get(option) is not None:
            if options[option] < 0:
                raise CommandError(f"--{option.replace('_', '-')} must not be negative.")
            changes[field] = options[option]
    if options.get("monthly_budget") is not None:
        try:
            budget = Decimal(options["monthly_budget"])
        except InvalidOperation:
            raise CommandError("--monthly-budget must be an amount in USD, e.g. 25 or 12.50.") from None
        if not budget.is_finite() or budget < 0:
            raise CommandError("--monthly-budget must be an amount in USD, e.g. 25 or 12.50.")
        # As given, to the hundred-millionth of a dollar: $0.001 is a budget, not "none". The
        # service refuses what is past the bound or finer than that.
        changes["monthly_budget_usd"] = budget
    return changes
