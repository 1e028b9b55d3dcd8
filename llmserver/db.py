"""Database helpers every app shares: statements written out once instead of built by the ORM on
each call (for the hot paths that measured it), deleting in batches, and running a step in a
thread from the event loop with its connection handed back at once."""

import functools
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django import db
from django.db import connection
from django.db.models import Field, Model, QuerySet

T = TypeVar("T")
PRUNE_BATCH_SIZE = 5000


def quote(name: str) -> str:
    return connection.ops.quote_name(name)


def table(model: type[Model]) -> str:
    return quote(model._meta.db_table)


def column(model: type[Model], field_name: str) -> str:
    return quote(model._meta.get_field(field_name).column)


def timestamp(value: datetime | None) -> Any:
    """A datetime as the database takes it in a written-out statement."""
    return connection.ops.adapt_datetimefield_value(value)


@functools.cache
def _insert_statement(model: type[Model]) -> tuple[str, tuple[Field, ...]]:
    fields = tuple(field for field in model._meta.concrete_fields if not field.primary_key)
    columns = ", ".join(quote(field.column) for field in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    sql = f"INSERT INTO {table(model)} ({columns}) VALUES ({placeholders}) RETURNING {quote(model._meta.pk.column)}"
    return sql, fields


def insert(instance: Model) -> None:
    """INSERT a new `instance` and set its primary key: what `instance.save()` does for a new
    row, without its signals (nothing here listens to them). The values are prepared by the
    model's own fields, as the ORM prepares them, so what is stored is the same; the SQL
    (RETURNING) runs on SQLite 3.35+ and PostgreSQL alike."""
    sql, fields = _insert_statement(type(instance))
    values = [field.get_db_prep_save(field.pre_save(instance, add=True), connection) for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        instance.pk = cursor.fetchone()[0]
    instance._state.adding = False
    instance._state.db = connection.alias


def delete_in_batches(queryset: QuerySet) -> int:
    """Delete the rows of `queryset` PRUNE_BATCH_SIZE at a time: one long DELETE would hold its
    locks (SQLite's whole-database write lock) for its whole length. Returns how many."""
    deleted = 0
    while True:
        batch = list(queryset.values_list("pk", flat=True)[:PRUNE_BATCH_SIZE])
        if not batch:
            return deleted
        deleted += queryset.model.objects.filter(pk__in=batch).delete()[0]


def in_thread(step: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """`step` run in the request's thread, its database connection handed back (to the pool)
    as soon as it returns: a turn holds no connection while it waits on upstream, which may
    take minutes. Without this, every turn in flight kept one, and a pool of 10 stalled the
    11th concurrent stream until the pool's timeout."""

    def run(**kwargs: Any) -> T:
        try:
            return step(**kwargs)
        finally:
            # (Inside a test's transaction the connection must stay: nothing else is open then.)
            if not db.connection.in_atomic_block:
                db.connection.close()

    return sync_to_async(run)
