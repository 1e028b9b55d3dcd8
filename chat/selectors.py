"""Reads, each next to the index that serves it. (The statements on a chat turn's own path are
written out in rows.py.)"""

from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any

from django.db.models import DecimalField, QuerySet, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from chat import keys
from chat import rows as rows_sql
from chat.context import HistoryMessage
from chat.models import ApiKey, ChatSession, Message, UsageDaily, UsageDailyTotal, UsageRecord
from llmserver.errors import ApiKeyNotFound, SessionNotFound

# History is read newest first in pages of this size, only as far as the context budget reaches.
HISTORY_PAGE_SIZE = 100


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The usable key for a presented key string, or None for any bad key: malformed, wrong
    checksum, unknown, wrong secret, revoked or expired all look the same to the caller.

    A malformed key or a bad checksum is rejected without a query. Lookups are not cached: one
    indexed query per request is cheap, and revocation is then immediate by construction.
    The secret is compared in constant time with the stored hash (and, during a rotation's grace
    period, with the previous one).
    """
    parsed = keys.parse_key(raw_key)
    if parsed is None:
        return None
    api_key = ApiKey.objects.select_related("upstream_credential").filter(key_id=parsed.key_id).first()
    if api_key is None:
        return None
    now = timezone.now()
    if api_key.status_at(now) != ApiKey.Status.ACTIVE:
        return None
    if keys.secret_matches(parsed.secret, api_key.secret_hash):
        return api_key
    in_grace = api_key.previous_secret_valid_until is not None and api_key.previous_secret_valid_until > now
    if in_grace and keys.secret_matches(parsed.secret, api_key.previous_secret_hash):
        return api_key
    return None


def api_key_get(*, key_id: str) -> ApiKey:
    """The key with this public id. Raises ApiKeyNotFound."""
    api_key = ApiKey.objects.filter(key_id=key_id).first()
    if api_key is None:
        raise ApiKeyNotFound(details={"key_id": key_id})
    return api_key


def api_key_list() -> QuerySet[ApiKey]:
    """Every key, newest first, with the tokens it has used, from the daily roll-ups: the raw
    records may have been pruned, and summing them would read every call ever made."""
    return ApiKey.objects.annotate(
        total_tokens=Coalesce(Sum("usage_days__total_tokens"), 0)
    ).order_by("-created_at", "-id")


def session_get(*, api_key: ApiKey, public_id: str) -> ChatSession:
    """The key's session with this id. Another key's session is 'not found', never 'forbidden':
    a caller must not learn which ids other keys use."""
    session = ChatSession.objects.filter(api_key=api_key, public_id=public_id).first()
    if session is None:
        raise SessionNotFound()
    return session


def session_list(*, api_key: ApiKey) -> QuerySet[ChatSession]:
    """The key's sessions, newest first (index chat_session_list_idx)."""
    return ChatSession.objects.filter(api_key=api_key).order_by("-created_at", "-id")


def message_list(*, session: ChatSession) -> QuerySet[Message]:
    """The session's messages, oldest first (index chat_message_list_idx)."""
    return Message.objects.filter(session=session).order_by("id")


def usage_list_for_session(*, session: ChatSession) -> QuerySet[UsageRecord]:
    """The session's upstream calls, oldest first (the index on usage records' session)."""
    return UsageRecord.objects.filter(session=session).order_by("id")


# Costs are kept to a hundred-millionth of a dollar: a token of the cheapest model still counts.
COST_QUANTUM = Decimal("0.00000001")


def usage_cost(*, model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
    """What a call costs in USD at the model's current price; 0 when no price matches."""
    if not prompt_tokens and not completion_tokens:
        return Decimal(0)  # a failed call: no price to read
    price = rows_sql.price_per_million(model=model)
    if price is None:
        return Decimal(0)
    input_per_million, output_per_million = price
    cost = (prompt_tokens * input_per_million + completion_tokens * output_per_million) / 1_000_000
    return cost.quantize(COST_QUANTUM)


def session_has_messages(*, session_pk: int) -> bool:
    return Message.objects.filter(session_id=session_pk).exists()


def history_newest_first(*, session_pk: int) -> Iterator[HistoryMessage]:
    """The session's replayable messages, newest first, fetched a page at a time
    (index chat_message_history_idx). Failed, pending and incomplete messages are never replayed.
    """
    before_id: int | None = None
    while True:
        rows = rows_sql.history_page(
            session_pk=session_pk, status=Message.Status.COMPLETE, before_id=before_id, size=HISTORY_PAGE_SIZE
        )
        for message_id, role, content, token_count, token_encoding in rows:
            yield HistoryMessage(role=role, content=content, token_count=token_count, token_encoding=token_encoding)
            before_id = message_id
        if len(rows) < HISTORY_PAGE_SIZE:
            return


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


def usage_overview(*, day_from: date, day_to: date, top_keys: int) -> dict[str, Any]:
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
