"""The statements every chat turn runs on the usage roll-ups and the price table, written out
once rather than built by the ORM each time (see chat/turns/sql.py for why)."""

import functools
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Model

from chat.models import ModelPrice
from llmserver import db


@functools.cache
def _roll_up_statement(model: type[Model], identity: tuple[str, ...], counts: tuple[str, ...]) -> str:
    assignments = ", ".join(f"{db.column(model, name)} = {db.column(model, name)} + %s" for name in counts)
    conditions = " AND ".join(f"{db.column(model, name)} = %s" for name in identity)
    return f"UPDATE {db.table(model)} SET {assignments} WHERE {conditions}"


def roll_up_add(model: type[Model], identity: dict[str, Any], counts: dict[str, Any]) -> bool:
    """Add `counts` (field name -> amount) to the roll-up row of `identity` (field name ->
    value). False when the row does not exist yet. Two run on every call: built with the ORM's
    F() expressions, each cost 0.3 ms on PostgreSQL (bench/chat_throughput.py)."""
    with connection.cursor() as cursor:
        statement = _roll_up_statement(model, tuple(identity), tuple(counts))
        cursor.execute(statement, [*counts.values(), *identity.values()])
        return cursor.rowcount > 0


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
