"""The statements every chat turn runs on its usage record, the roll-ups and the price table,
written out once rather than built by the ORM each time (see chat/turns/sql.py for why)."""

import functools
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Model

from chat.models import ModelPrice, UsageRecord
from llmserver import db

# What closing a record sets, in this order.
CLOSED_FIELDS = (
    "session", "model", "prompt_tokens", "completion_tokens", "total_tokens", "usage_estimated", "cost", "key_source",
    "latency_ms", "outcome", "error_code", "heartbeat_at",
)


@functools.cache
def _close_statement(*, if_dead: bool) -> str:
    assignments = ", ".join(f"{db.column(UsageRecord, name)} = %s" for name in CLOSED_FIELDS)
    dead = f" AND {db.column(UsageRecord, 'heartbeat_at')} < %s" if if_dead else ""
    return (
        f"UPDATE {db.table(UsageRecord)} SET {assignments} "
        f"WHERE {db.column(UsageRecord, 'id')} = %s AND {db.column(UsageRecord, 'outcome')} = %s{dead}"
    )


def usage_close(*, record_id: int, values: dict[str, Any], dead_before: datetime | None = None) -> bool:
    """Set a record's final `values` (CLOSED_FIELDS, by name) if it is still in flight (and, with
    `dead_before`, its heartbeat older than that: the sweep must not close a turn that has just
    renewed it). False when it was closed already: by the sweep, or by this very turn in an attempt
    whose end the database acknowledged too late to be seen."""
    fields = [UsageRecord._meta.get_field(name) for name in CLOSED_FIELDS]
    params = [field.get_db_prep_save(values[field.name], connection) for field in fields]
    params += [record_id, UsageRecord.Outcome.IN_FLIGHT]
    if dead_before is not None:
        params.append(db.timestamp(dead_before))
    return db.changed(_close_statement(if_dead=dead_before is not None), params)


@functools.cache
def _heartbeat_statement() -> str:
    completion = db.column(UsageRecord, "completion_tokens")
    return (
        f"UPDATE {db.table(UsageRecord)} SET {db.column(UsageRecord, 'heartbeat_at')} = %s, {completion} = %s, "
        f"{db.column(UsageRecord, 'total_tokens')} = {db.column(UsageRecord, 'prompt_tokens')} + %s "
        f"WHERE {db.column(UsageRecord, 'id')} = %s AND {db.column(UsageRecord, 'outcome')} = %s"
    )


def usage_heartbeat(*, record_id: int, now: datetime, completion_tokens: int) -> bool:
    """Say that the record's call is still under way, with the tokens it has written so far (what
    the sweep records should the process die now). False when it is no longer in flight."""
    return db.changed(
        _heartbeat_statement(),
        [db.timestamp(now), completion_tokens, completion_tokens, record_id, UsageRecord.Outcome.IN_FLIGHT],
    )


@functools.cache
def _roll_up_statement(model: type[Model], identity: tuple[str, ...], counts: tuple[str, ...]) -> str:
    assignments = ", ".join(f"{db.column(model, name)} = {db.column(model, name)} + %s" for name in counts)
    conditions = " AND ".join(f"{db.column(model, name)} = %s" for name in identity)
    return f"UPDATE {db.table(model)} SET {assignments} WHERE {conditions}"


def roll_up_add(model: type[Model], identity: dict[str, Any], counts: dict[str, Any]) -> bool:
    """Add `counts` (field name -> amount) to the roll-up row of `identity` (field name ->
    value). False when the row does not exist yet. Two run on every call: built with the ORM's
    F() expressions, each cost 0.3 ms on PostgreSQL (bench/chat_throughput.py)."""
    statement = _roll_up_statement(model, tuple(identity), tuple(counts))
    return db.changed(statement, [*counts.values(), *identity.values()])


@functools.cache
def _price_statement() -> str:
    prefix = db.column(ModelPrice, "model_prefix")
    # As text, read exactly: SQLite keeps decimals as floats.
    return (
        f"SELECT CAST({db.column(ModelPrice, 'input_per_million')} AS TEXT), "
        f"CAST({db.column(ModelPrice, 'output_per_million')} AS TEXT) FROM {db.table(ModelPrice)} "
        f"WHERE substr(%s, 1, length({prefix})) = {prefix} ORDER BY length({prefix}) DESC LIMIT 1"
    )


def price_per_million(*, model: str) -> tuple[Decimal, Decimal] | None:
    """(input, output) USD per million tokens of the price whose prefix is the longest that
    `model` starts with, chosen by the database: one row read per call keeps prices current in
    every worker, with no cache to invalidate (reading the whole table and choosing here cost
    0.5 ms a call). The prefix is compared as a prefix, not as a LIKE pattern, so that `_` or `%`
    in it match only themselves, and case counts on SQLite too. None when no price matches."""
    with connection.cursor() as cursor:
        cursor.execute(_price_statement(), [model])
        row = cursor.fetchone()
    return None if row is None else (Decimal(row[0]), Decimal(row[1]))
