"""Writes of the usage: one record per upstream call, the daily roll-ups moved with it, pruning.

A turn's record is written before its call is made (`usage_begin`, outcome in_flight) and closed
when the call ends (`usage_close`): a process that dies mid-call leaves a record for the sweep to
close (chat/turns/sweep.py), so that every call the server made has exactly one record, even
across a restart. The roll-ups and the key's limits count a record when it is closed.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from chat.models import UsageDaily, UsageDailyTotal, UsageRecord
from chat.usage import limits, pricing, sql
from chat.usage.limits import Reservation
from llmserver import db
from llmserver.db import delete_in_batches
from llmserver.logging import NO_REQUEST, current_request_id

# The error code of a call whose process went away before it could close the record.
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class UsageClosing:
    """What closing a turn's record did: `counted` False when the turn had closed it already;
    `replaced`, the interrupted record the sweep had closed it as, when it corrected that one (the
    sweep counted that record's tokens in its session's totals: the caller takes them back)."""

    counted: bool
    replaced: UsageRecord | None = None


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
        _roll_ups_add(record)
    return record


def usage_begin(
    *, api_key_id: int, session_pk: int | None, user_message_id: int | None, model: str, prompt_tokens: int,
    key_source: str, reservations: list[Reservation], now: datetime,
) -> UsageRecord:
    """The record of a call about to be made, in flight, in the caller's transaction: the prompt
    tokens as counted here (until upstream says), none written yet."""
    record = UsageRecord(
        api_key_id=api_key_id, session_id=session_pk, user_message_id=user_message_id, model=model,
        prompt_tokens=prompt_tokens, completion_tokens=0, total_tokens=prompt_tokens, usage_estimated=True,
        cost=Decimal(0), key_source=key_source, outcome=UsageRecord.Outcome.IN_FLIGHT, created_at=now,
        heartbeat_at=now, reservations=[reservation.stored() for reservation in reservations],
        request_id=current_request_id.get() if current_request_id.get() != NO_REQUEST else "",
    )
    db.insert(record)
    return record


def usage_close(
    *, record: UsageRecord, session_pk: int | None, model: str, asked_for: str, prompt_tokens: int,
    completion_tokens: int, usage_estimated: bool, key_source: str, latency_ms: int, outcome: str, error_code: str,
    reservations: list[Reservation],
) -> UsageClosing:
    """Close the turn's in-flight `record` (as `usage_begin` made it) with what the call cost, move
    the roll-ups and settle the key's limits, in the caller's transaction. Not counted when the
    turn closed it already (an end step run again after the database committed it the first
    time): nothing is counted twice.

    A record the sweep closed already, taking the turn for dead (its heartbeat stopped for a
    lease period, though the process lived on), is corrected to what the turn knows, and the
    roll-ups and limits with it: a call has one record, whoever closes it first."""
    cost = pricing.usage_cost(
        model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, asked_for=asked_for
    )
    values = {
        "session": session_pk, "model": model, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens, "usage_estimated": usage_estimated, "cost": cost,
        "key_source": key_source, "latency_ms": latency_ms, "outcome": outcome, "error_code": error_code,
        "heartbeat_at": None,
    }
    closed = UsageRecord(pk=record.pk, api_key_id=record.api_key_id, created_at=record.created_at, **{
        ("session_id" if name == "session" else name): value for name, value in values.items()
    })
    if sql.usage_close(record_id=record.pk, values=values):
        _roll_ups_add(closed)
        limits.settle(api_key_id=record.api_key_id, reservations=reservations, tokens=closed.total_tokens, cost=cost)
        return UsageClosing(counted=True)
    previous = UsageRecord.objects.select_for_update().filter(pk=record.pk).first()
    # Only the sweep's own closing is corrected (error code `interrupted`): one this turn wrote
    # itself (`server_shutdown`, say), in an attempt acknowledged too late, is this turn's end.
    if previous is None or (previous.outcome, previous.error_code) != (UsageRecord.Outcome.INTERRUPTED, INTERRUPTED):
        return UsageClosing(counted=False)
    UsageRecord.objects.filter(pk=record.pk).update(**values)
    _roll_ups_add(previous, sign=-1)
    _roll_ups_add(closed)
    counted = {limits.Limit.TOKENS_PER_DAY: Decimal(previous.total_tokens), limits.Limit.MONTHLY_BUDGET: previous.cost}
    limits.settle(
        api_key_id=record.api_key_id, tokens=closed.total_tokens, cost=cost,
        reservations=[
            Reservation(limit=r.limit, window_start=r.window_start, amount=counted.get(r.limit, r.amount))
            for r in reservations
        ],
    )
    return UsageClosing(counted=True, replaced=previous)


def usage_discard(*, record: UsageRecord, reservations: list[Reservation]) -> None:
    """Delete the in-flight `record` of a call that was never made (the client left before it):
    no call, no record. The tokens and cost it reserved are given back; its request stays counted."""
    if UsageRecord.objects.filter(pk=record.pk, outcome=UsageRecord.Outcome.IN_FLIGHT).delete()[0]:
        limits.settle(api_key_id=record.api_key_id, reservations=reservations, tokens=0, cost=Decimal(0))


def usage_heartbeat(*, record_id: int, now: datetime, completion_tokens: int) -> bool:
    """The record's call is still under way: see chat/usage/sql.py's usage_heartbeat."""
    return sql.usage_heartbeat(record_id=record_id, now=now, completion_tokens=completion_tokens)


def usage_interrupt(*, record: UsageRecord, now: datetime, dead_before: datetime) -> bool:
    """Close the in-flight `record` of a call whose process went away (no heartbeat since
    `dead_before`), with the tokens known by its last heartbeat (the prompt as counted here, and
    what it had written of a stream), in the caller's transaction. False when something else
    closed it first, or its turn renewed its heartbeat meanwhile."""
    cost = pricing.usage_cost(
        model=record.model, prompt_tokens=record.prompt_tokens, completion_tokens=record.completion_tokens
    )
    latency_ms = max(0, round((now - record.created_at).total_seconds() * 1000))
    values = {
        "session": record.session_id, "model": record.model, "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens, "total_tokens": record.total_tokens, "usage_estimated": True,
        "cost": cost, "key_source": record.key_source, "latency_ms": latency_ms,
        "outcome": UsageRecord.Outcome.INTERRUPTED, "error_code": INTERRUPTED, "heartbeat_at": None,
    }
    if not sql.usage_close(record_id=record.pk, values=values, dead_before=dead_before):
        return False
    record.cost, record.outcome = cost, UsageRecord.Outcome.INTERRUPTED
    _roll_ups_add(record)
    limits.settle(
        api_key_id=record.api_key_id, tokens=record.total_tokens, cost=cost,
        reservations=[Reservation.from_stored(stored) for stored in record.reservations],
    )
    return True


def usage_prune(*, older_than_days: int) -> tuple[int, datetime]:
    """Delete usage records older than the cutoff, in batches. The roll-ups keep every report
    whole. Returns (deleted, cutoff)."""
    cutoff = timezone.now() - timedelta(days=older_than_days)
    return delete_in_batches(UsageRecord.objects.filter(created_at__lt=cutoff)), cutoff


def _roll_ups_add(record: UsageRecord, *, sign: int = 1) -> None:
    """Add the record to its key's roll-up and to the all-keys roll-up of its day and model (or,
    with `sign` -1, take it back out)."""
    day = record.created_at.astimezone(dt_timezone.utc).date()
    counts = {
        "requests": sign,
        "prompt_tokens": sign * record.prompt_tokens,
        "completion_tokens": sign * record.completion_tokens,
        "total_tokens": sign * record.total_tokens,
        "cost": sign * record.cost,
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
