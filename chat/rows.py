"""The statements every chat turn runs, as SQL built once rather than through the ORM each time.

A turn runs about a dozen statements. Built through the ORM (a QuerySet compiled, its expressions
resolved, `save()`'s machinery run), each cost 0.1-0.4 ms of CPU more than the same statement
written out, and a worker is CPU-bound: its CPU per turn is what bounds how many turns it serves.
Written out, a worker served 1.44x the turns (bench/chat_throughput.py, PostgreSQL, 8 clients).
Here the SQL is made once per model and the values are prepared by the model's own fields, as
the ORM prepares them, so what is stored is the same. The SQL is plain enough for SQLite and
PostgreSQL alike (SQLite has RETURNING since 3.35, which settings.py requires). Everything off the turn's path keeps using the ORM.
"""

import functools
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Field, Model

from chat.models import ChatSession, Message, ModelPrice


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def _table(model: type[Model]) -> str:
    return _quote(model._meta.db_table)


def _column(model: type[Model], field_name: str) -> str:
    return _quote(model._meta.get_field(field_name).column)


@functools.cache
def _insert_statement(model: type[Model]) -> tuple[str, tuple[Field, ...]]:
    fields = tuple(field for field in model._meta.concrete_fields if not field.primary_key)
    columns = ", ".join(_quote(field.column) for field in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    sql = (
        f"INSERT INTO {_table(model)} ({columns}) VALUES ({placeholders}) "
        f"RETURNING {_quote(model._meta.pk.column)}"
    )
    return sql, fields


def insert(instance: Model) -> None:
    """INSERT a new `instance` and set its primary key: what `instance.save()` does for a new
    row, without its signals (nothing here listens to them)."""
    sql, fields = _insert_statement(type(instance))
    values = [field.get_db_prep_save(field.pre_save(instance, add=True), connection) for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        instance.pk = cursor.fetchone()[0]
    instance._state.adding = False
    instance._state.db = connection.alias


def _timestamp(value: datetime | None) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


# --- Sessions -----------------------------------------------------------------------------------

_LEASED_SESSION_FIELDS = ("id", "title", "system_prompt", "model", "memory_facts")


@functools.cache
def _lease_statement() -> str:
    started = _column(ChatSession, "turn_started_at")
    returned = ", ".join(_column(ChatSession, name) for name in _LEASED_SESSION_FIELDS)
    return (
        f"UPDATE {_table(ChatSession)} SET {started} = %s "
        f"WHERE {_column(ChatSession, 'api_key')} = %s AND {_column(ChatSession, 'public_id')} = %s "
        f"AND ({started} IS NULL OR {started} < %s) RETURNING {returned}"
    )


def session_lease(*, api_key_id: int, public_id: str, now: datetime, expired_before: datetime) -> ChatSession | None:
    """Take the turn lease of an existing session whose lease is free (or ran out before
    `expired_before`), and read what a turn needs of it, in one statement. None when there is
    no such session or another turn holds it: the caller tells the two apart.

    The session returned holds the fields a turn reads; the others are deferred."""
    with connection.cursor() as cursor:
        cursor.execute(_lease_statement(), [_timestamp(now), api_key_id, public_id, _timestamp(expired_before)])
        row = cursor.fetchone()
    if row is None:
        return None
    values = dict(zip(_LEASED_SESSION_FIELDS, row), api_key_id=api_key_id, public_id=public_id, turn_started_at=now)
    memory_field = ChatSession._meta.get_field("memory_facts")
    values["memory_facts"] = memory_field.from_db_value(values["memory_facts"], None, connection)
    # As the ORM makes a row it read: the fields not read are deferred (loaded if touched, and
    # not written by save()), never left at their defaults.
    names = [field.attname for field in ChatSession._meta.concrete_fields if field.attname in values]
    return ChatSession.from_db(connection.alias, names, [values[name] for name in names])


@functools.cache
def _end_turn_statement() -> str:
    started = _column(ChatSession, "turn_started_at")
    prompt_total = _column(ChatSession, "prompt_tokens_total")
    completion_total = _column(ChatSession, "completion_tokens_total")
    return (
        f"UPDATE {_table(ChatSession)} SET "
        f"{started} = CASE WHEN {started} = %s THEN NULL ELSE {started} END, "
        f"{_column(ChatSession, 'updated_at')} = %s, "
        f"{prompt_total} = {prompt_total} + %s, {completion_total} = {completion_total} + %s "
        f"WHERE {_column(ChatSession, 'id')} = %s"
    )


def session_end_turn(
    *, session_pk: int, lease_started_at: datetime | None, now: datetime, prompt_tokens: int = 0,
    completion_tokens: int = 0,
) -> bool:
    """Release the lease taken at `lease_started_at` (only that one: a lease taken since by
    another turn stays) and add the turn's tokens to the session's totals, in one UPDATE that
    also locks the row for the rest of the transaction. False when the session is gone."""
    with connection.cursor() as cursor:
        cursor.execute(
            _end_turn_statement(),
            [_timestamp(lease_started_at), _timestamp(now), prompt_tokens, completion_tokens, session_pk],
        )
        return cursor.rowcount > 0


# --- Usage roll-ups ------------------------------------------------------------------------------

@functools.cache
def _roll_up_statement(model: type[Model], identity: tuple[str, ...], counts: tuple[str, ...]) -> str:
    assignments = ", ".join(f"{_column(model, name)} = {_column(model, name)} + %s" for name in counts)
    conditions = " AND ".join(f"{_column(model, name)} = %s" for name in identity)
    return f"UPDATE {_table(model)} SET {assignments} WHERE {conditions}"


def roll_up_add(model: type[Model], identity: dict[str, Any], counts: dict[str, Any]) -> bool:
    """Add `counts` (field name -> amount) to the roll-up row of `identity` (field name ->
    value). False when the row does not exist yet. Two run on every call: built with the ORM's
    F() expressions, each cost 0.3 ms on PostgreSQL (bench/chat_throughput.py)."""
    with connection.cursor() as cursor:
        cursor.execute(_roll_up_statement(model, tuple(identity), tuple(counts)), [*counts.values(), *identity.values()])
        return cursor.rowcount > 0


# --- Messages -----------------------------------------------------------------------------------

@functools.cache
def _status_statement() -> str:
    return (
        f"UPDATE {_table(Message)} SET {_column(Message, 'status')} = %s, {_column(Message, 'error_code')} = %s "
        f"WHERE {_column(Message, 'id')} = %s"
    )


def message_set_status(*, message_id: int, status: str, error_code: str = "") -> None:
    with connection.cursor() as cursor:
        cursor.execute(_status_statement(), [status, error_code, message_id])


@functools.cache
def _history_statement(*, before: bool) -> str:
    columns = ", ".join(_column(Message, name) for name in ("id", "role", "content", "token_count", "token_encoding"))
    message_id = _column(Message, "id")
    older = f" AND {message_id} < %s" if before else ""
    # The shape of chat_message_history_idx: (session, status, id DESC).
    return (
        f"SELECT {columns} FROM {_table(Message)} "
        f"WHERE {_column(Message, 'session')} = %s AND {_column(Message, 'status')} = %s{older} "
        f"ORDER BY {message_id} DESC LIMIT %s"
    )


def history_page(*, session_pk: int, status: str, before_id: int | None, size: int) -> list[tuple[Any, ...]]:
    """Up to `size` (id, role, content, token_count, token_encoding) of the session's messages in
    `status`, newest first, older than `before_id` when given."""
    params: list[Any] = [session_pk, status]
    if before_id is not None:
        params.append(before_id)
    params.append(size)
    with connection.cursor() as cursor:
        cursor.execute(_history_statement(before=before_id is not None), params)
        return cursor.fetchall()



# --- Prices -------------------------------------------------------------------------------------

@functools.cache
def _price_statement() -> str:
    prefix = _column(ModelPrice, "model_prefix")
    # As text, read exactly: SQLite keeps decimals as floats.
    return (
        f"SELECT CAST({_column(ModelPrice, 'input_per_million')} AS TEXT), "
        f"CAST({_column(ModelPrice, 'output_per_million')} AS TEXT) FROM {_table(ModelPrice)} "
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
