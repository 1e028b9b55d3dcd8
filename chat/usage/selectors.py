"""Reads of the usage: a session's calls, reports from the daily roll-ups, recent failures."""

from datetime import date
from decimal import Decimal
from typing import Any

from django.db.models import DecimalField, QuerySet, Sum, Value
from django.db.models.functions import Coalesce

from chat.models import ApiKey, ChatSession, UsageDaily, UsageDailyTotal, UsageRecord


def usage_list_for_session(*, session: ChatSession) -> QuerySet[UsageRecord]:
    """The session's upstream calls, oldest first (the index on usage records' session)."""
    return UsageRecord.objects.filter(session=session).order_by("id")


USAGE_GROUP_FIELDS = {"day": ["day"], "model": ["model"], "day_model": ["day", "model"]}


def _usage_sums() -> dict[str, Any]:
    return {
        "requests": Coalesce(Sum("requests"), 0),
        "prompt_tokens": Coalesce(Sum("prompt_tokens"), 0),
        "completion_tokens": Coalesce(Sum("completion_tokens"), 0),
        "total_tokens": Coalesce(Sum("total_tokens"), 0),
        "cost": Coalesce(Sum("cost"), Value(Decimal(0)), output_field=DecimalField(max_digits=20, decimal_places=8)),
    }


def usage_report(*, api_key: ApiKey | None, day_from: date, day_to: date, group_by: str) -> dict[str, Any]:
    """Usage from the daily roll-ups (never the raw records): totals and one group per day,
    model, day and model, or key. `api_key=None` means every key.

    One key reads its own roll-ups (the unique index (key, day, model) serves the range); all
    keys read the all-keys roll-up (a few rows per day), except when grouped by key, which has
    to read every key's roll-ups in the period.
    """
    if api_key is not None:
        rows = UsageDaily.objects.filter(api_key=api_key, day__gte=day_from, day__lte=day_to)
    elif group_by == "key":
        rows = UsageDaily.objects.filter(day__gte=day_from, day__lte=day_to)
    else:
        rows = UsageDailyTotal.objects.filter(day__gte=day_from, day__lte=day_to)
    totals = rows.aggregate(**_usage_sums())
    if group_by != "key":
        fields = USAGE_GROUP_FIELDS[group_by]
        return {"totals": totals, "groups": list(rows.values(*fields).annotate(**_usage_sums()).order_by(*fields))}
    # Grouped by the key's row id alone (no join per roll-up row), then named in one query.
    groups = list(rows.values("api_key_id").annotate(**_usage_sums()))
    named = {
        pk: (key_id, name)
        for pk, key_id, name in ApiKey.objects.filter(pk__in=[g["api_key_id"] for g in groups]).values_list(
            "pk", "key_id", "name"
        )
    }
    for group in groups:
        group["api_key__key_id"], group["api_key__name"] = named[group["api_key_id"]]
    return {"totals": totals, "groups": sorted(groups, key=lambda g: g["api_key__key_id"])}


SUMMED_USAGE = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost")


# The keys an overview names: those that spent the most tokens.
TOP_KEYS = 10


def usage_overview(*, day_from: date, day_to: date, top_keys: int = TOP_KEYS) -> dict[str, Any]:
    """Every key's usage over a period, for operators (the admin report, the dashboard): totals,
    the day-and-model groups (for the chart), the same added up per model, and the keys that
    spent the most tokens. Two queries on the roll-ups."""
    by_day_model = usage_report(api_key=None, day_from=day_from, day_to=day_to, group_by="day_model")
    by_key = usage_report(api_key=None, day_from=day_from, day_to=day_to, group_by="key")
    # Per model: the day-and-model rows already read, added up here rather than queried again.
    per_model: dict[str, dict[str, Any]] = {}
    for group in by_day_model["groups"]:
        row = per_model.setdefault(group["model"], {"model": group["model"], **dict.fromkeys(SUMMED_USAGE, 0)})
        for name in SUMMED_USAGE:
            row[name] += group[name]
    return {
        "totals": by_day_model["totals"],
        "day_model": by_day_model["groups"],
        "models": sorted(per_model.values(), key=lambda row: row["model"]),
        "top_keys": sorted(by_key["groups"], key=lambda g: g["total_tokens"], reverse=True)[:top_keys],
    }


def usage_failures_recent(*, limit: int) -> QuerySet[UsageRecord]:
    """The latest upstream calls that failed or were cut short, newest first (the partial index
    chat_usage_failures_recent_idx holds only those, so this never scans the successes)."""
    return (
        UsageRecord.objects.exclude(outcome=UsageRecord.Outcome.SUCCESS)
        .select_related("api_key")
        .order_by("-created_at")[:limit]
    )
