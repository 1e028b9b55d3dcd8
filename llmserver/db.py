"""Database helpers every app shares: statements written out once instead of built by the ORM on
each call (for the hot paths that measured it), deleting in batches, and running a step in a
thread from the event loop, in its turn, with its connection handed back at once."""

import asyncio
import collections
import functools
import weakref
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django import db
from django.conf import settings
from django.db import connection
from django.db.models import Field, Model, QuerySet

from llmserver.http.errors import ApiError, DatabaseUnavailable, ServerBusy

T = TypeVar("T")
PRUNE_BATCH_SIZE = 5000
# One gate per event loop (under uvicorn, one loop per worker process).
_gates: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Gate]" = weakref.WeakKeyDictionary()


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


def changed(statement: str, params: list[Any]) -> bool:
    """Run a written-out UPDATE; True when it matched a row (the conditional writes of a turn,
    whose WHERE says whether the row is still in the state the caller expects)."""
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.rowcount > 0


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


class Gate:
    """A semaphore with two queues: `urgent` waiters (the steps of turns already under way: their
    heartbeats and their ends) go before the others (new requests). Under a burst, a turn whose
    upstream has answered must be able to write its answer and free its session, and a turn still
    waiting must renew its lease, however many new requests queue behind the pool: behind them,
    an answer already paid for was thrown away (503 after the queue's timeout) and a live turn
    lost its lease to a second turn on its session."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._urgent: collections.deque[asyncio.Future] = collections.deque()
        self._others: collections.deque[asyncio.Future] = collections.deque()

    async def acquire(self, *, urgent: bool) -> None:
        if self._free > 0 and not self._urgent and not self._others:
            self._free -= 1
            return
        place = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._others).append(place)
        try:
            await place
        except BaseException:
            if place.done() and not place.cancelled():
                # Handed the place just as the waiter was cancelled: hand it on.
                self.release()
            raise

    def release(self) -> None:
        for queue in (self._urgent, self._others):
            while queue:
                place = queue.popleft()
                if not place.done():
                    place.set_result(None)
                    return
        self._free += 1


def _gate() -> Gate:
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    if gate is None:
        gate = _gates[loop] = Gate(settings.DATABASE_CONCURRENT_STEPS)
    return gate


async def run_in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`function` run in the request's thread, in its turn at the database, its connection handed
    back (to the pool) as soon as it returns.

    In its turn: at most DATABASE_CONCURRENT_STEPS steps of a process run at once (as many as its
    pool has connections); the others wait here, in the event loop. A thousand requests at once
    used to start a thousand threads that all asked the pool for a connection, held each one
    while they waited for the CPU, and most of them gave up after the pool's timeout with a 500.
    Waiting longer than DATABASE_QUEUE_TIMEOUT_SECONDS is answered 503 server_busy.

    Handed back: a turn holds no connection while it waits on upstream, which may take minutes.
    Without this, every turn in flight kept one, and a pool of 10 stalled the 11th concurrent
    stream until the pool's timeout."""
    return await _in_turn(function, args, kwargs, urgent=False)


async def _in_turn(function: Callable[..., T], args: tuple, kwargs: dict[str, Any], *, urgent: bool) -> T:
    def run() -> T:
        try:
            return function(*args, **kwargs)
        finally:
            # (Inside a test's transaction the connection must stay: nothing else is open then.)
            if not db.connection.in_atomic_block:
                db.connection.close()

    gate = _gate()
    if urgent:
        # No time limit: the step of a turn under way is not refused; it goes first instead.
        await gate.acquire(urgent=True)
    else:
        try:
            async with asyncio.timeout(settings.DATABASE_QUEUE_TIMEOUT_SECONDS):
                await gate.acquire(urgent=False)
        except TimeoutError:
            raise ServerBusy() from None
    try:
        return await sync_to_async(run)()
    finally:
        gate.release()


def in_thread(step: Callable[..., T], *, urgent: bool = False) -> Callable[..., Awaitable[T]]:
    """`step`, taking keyword arguments, as a coroutine function that runs it in its turn at the
    database (`run_in_thread`); `urgent` for the steps of a turn under way (see Gate)."""

    async def call(**kwargs: Any) -> T:
        return await _in_turn(step, (), kwargs, urgent=urgent)

    return call


def unavailable(exc: BaseException) -> ApiError | None:
    """The API error a database failure is: the pool had no connection in time, or SQLite's lock
    was held too long (the server is busy); the database could not be reached, or dropped the
    connection (it is unavailable). None for anything else."""
    if isinstance(exc, db.OperationalError):
        cause = f"{type(exc.__cause__).__name__}: {exc}"
        if "PoolTimeout" in cause or "database is locked" in cause:
            return ServerBusy()
        return DatabaseUnavailable()
    if isinstance(exc, db.InterfaceError):
        return DatabaseUnavailable()
    return None

