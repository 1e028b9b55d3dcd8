"""Writes of the usage: one record per upstream call, the daily roll-ups moved with it, pruning."""

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from chat.models import UsageDaily, UsageDailyTotal, UsageRecord
from chat.usage import pricing, sql
from llmserver import db
from llmserver.db import delete_in_batches


def usage_record(
    *, api_key_id: int, session_pk: int | None, model: str, prompt_tokens: int, completion_tokens: int,
    usage_estimated: bool, key_source: str, latency_ms: int, outcome: str, error_code: str = "",
) -> UsageRecord:
    """Record one upstream call and move its day's roll-up, in the caller's transaction (or one
    of its own), so that the record and the roll-up can never disagree."""
    cost = pricing.usage_cost(model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    # No savepoint when called inside a turn's transaction (it would cost two more statements
    # per call); a transaction of its own when called alone.
    with transaction.atomic(savepoint=False):
        record = UsageRecord(
            api_key_id=api_key_id,
            session_id=session_pk,
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            usage_estimated=usage_estimated,
            cost=cost,
            key_source=key_source,
            latency_ms=latency_ms,
            outcome=outcome,
            error_code=error_code,
        )
        db.insert(record)
        _usage_daily_add(record)
    return record


def usage_prune(*, older_than_days: int) -> tuple[int, datetime]:
    """Delete usage records older than the cutoff, in batches. The roll-ups keep every report
    whole. Returns (deleted, cutoff)."""
    cutoff = timezone.now() - timedelta(days=older_than_days)
    return delete_in_batches(UsageRecord.objects.filter(created_at__lt=cutoff)), cutoff


def _usage_daily_add(record: UsageRecord) -> None:
    """Add the record to its key's roll-up and to the all-keys roll-up of its day and model."""
    day = record.created_at.astimezone(dt_timezone.utc).date()
    counts = {
        "requests": 1,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "total_tokens": record.total_tokens,
        "cost": record.cost,
    }
    _roll_up_add(UsageDaily, {"api_key": record.api_key_id, "model": record.model, "day": day}, counts)
    _roll_up_add(UsageDailyTotal, {"model": record.model, "day": day}, counts)


def _roll_up_add(
    model: type[UsageDaily] | type[UsageDailyTotal], identity: dict[str, Any], counts: dict[str, Any]
) -> None:
    """Add `counts` to the roll-up row of `identity` (field name -> value), creating it on the
    day's first call."""
    if sql.roll_up_add(model, identity, counts):
        return
    try:
        # The first call of its day. Two first calls at once: the unique constraint lets one
        # insert win, and the other adds to its row.
        with transaction.atomic():
            model.objects.create(**{model._meta.get_field(name).attname: value for name, value in identity.items()},
                                 **counts)
    except IntegrityError:
        sql.roll_up_add(model, identity, counts)
