"""The statements every chat turn runs on its session and messages, as SQL built once rather than
through the ORM each time.

A turn runs about a dozen statements. Built through the ORM (a QuerySet compiled, its expressions
resolved, `save()`'s machinery run), each cost 0.1-0.4 ms of CPU more than the same statement
written out, and a worker is CPU-bound: its CPU per turn is what bounds how many turns it serves.
Written out, a worker served 1.44x the turns (bench/chat_throughput.py, PostgreSQL, 8 clients).
Here the SQL is made once per model and the values are prepared by the model's own fields, as
the ORM prepares them, so what is stored is the same. The SQL is plain enough for SQLite and
PostgreSQL alike (SQLite has RETURNING since 3.35, which settings.py requires). The usage's own
statements are in chat/usage/sql.py; everything off the turn's path keeps using the ORM.
"""

import functools
from datetime import datetime
from typing import Any

from django.db import connection

from chat.models import ChatSession, Message
from llmserver import db

_LEASED_SESSION_FIELDS = ("id", "title", "system_prompt", "model", "memory_facts")


@functools.cache
def _lease_statement() -> str:
    started = db.column(ChatSession, "turn_started_at")
    heartbeat = db.column(ChatSession, "turn_heartbeat_at")
    returned = ", ".join(db.column(ChatSession, name) for name in _LEASED_SESSION_FIELDS)
    return (
        f"UPDATE {db.table(ChatSession)} SET {started} = %s, {heartbeat} = %s "
        f"WHERE {db.column(ChatSession, 'api_key')} = %s AND {db.column(ChatSession, 'public_id')} = %s "
        f"AND ({heartbeat} IS NULL OR {heartbeat} < %s) RETURNING {returned}"
    )


def session_lease(*, api_key_id: int, public_id: str, now: datetime, dead_before: datetime) -> ChatSession | None:
    """Take the turn lease of an existing session whose lease is free (or was last renewed before
    `dead_before`: its holder is gone), and read what a turn needs of it, in one statement. None
    when there is no such session or another turn holds it: the caller tells the two apart.

    The session returned holds the fields a turn reads; the others are deferred."""
    with connection.cursor() as cursor:
        cursor.execute(
            _lease_statement(),
            [db.timestamp(now), db.timestamp(now), api_key_id, public_id, db.timestamp(dead_before)],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    values = dict(
        zip(_LEASED_SESSION_FIELDS, row, strict=True), api_key_id=api_key_id, public_id=public_id,
        turn_started_at=now, turn_heartbeat_at=now,
    )
    memory_field = ChatSession._meta.get_field("memory_facts")
    values["memory_facts"] = memory_field.from_db_value(values["memory_facts"], None, connection)
    # As the ORM makes a row it read: the fields not read are deferred (loaded if touched, and
    # not written by save()), never left at their defaults.
    names = [field.attname for field in ChatSession._meta.concrete_fields if field.attname in values]
    return ChatSession.from_db(connection.alias, names, [values[name] for name in names])


@functools.cache
def _end_turn_statement() -> str:
    started = db.column(ChatSession, "turn_started_at")
    heartbeat = db.column(ChatSession, "turn_heartbeat_at")
    prompt_total = db.column(ChatSession, "prompt_tokens_total")
    completion_total = db.column(ChatSession, "completion_tokens_total")
    # Both CASEs read the row as it was before the UPDATE (SQL evaluates every SET against it).
    return (
        f"UPDATE {db.table(ChatSession)} SET "
        f"{heartbeat} = CASE WHEN {started} = %s THEN NULL ELSE {heartbeat} END, "
        f"{started} = CASE WHEN {started} = %s THEN NULL ELSE {started} END, "
        f"{db.column(ChatSession, 'updated_at')} = %s, "
        f"{prompt_total} = {prompt_total} + %s, {completion_total} = {completion_total} + %s "
        f"WHERE {db.column(ChatSession, 'id')} = %s"
    )


def session_end_turn(
    *, session_pk: int, lease_started_at: datetime | None, now: datetime, prompt_tokens: int = 0,
    completion_tokens: int = 0,
) -> bool:
    """Release the lease taken at `lease_started_at` (only that one: a lease taken since by
    another turn stays) and add the turn's tokens to the session's totals, in one UPDATE that
    also locks the row for the rest of the transaction. False when the session is gone."""
    lease = db.timestamp(lease_started_at)
    return db.changed(
        _end_turn_statement(), [lease, lease, db.timestamp(now), prompt_tokens, completion_tokens, session_pk]
    )


@functools.cache
def _add_tokens_statement() -> str:
    prompt_total = db.column(ChatSession, "prompt_tokens_total")
    completion_total = db.column(ChatSession, "completion_tokens_total")
    return (
        f"UPDATE {db.table(ChatSession)} SET {prompt_total} = {prompt_total} + %s, "
        f"{completion_total} = {completion_total} + %s WHERE {db.column(ChatSession, 'id')} = %s"
    )


def session_add_tokens(*, session_pk: int, prompt_tokens: int, completion_tokens: int) -> None:
    """Move the session's token totals by these (negative to take tokens back)."""
    db.changed(_add_tokens_statement(), [prompt_tokens, completion_tokens, session_pk])


@functools.cache
def _renew_statement() -> str:
    return (
        f"UPDATE {db.table(ChatSession)} SET {db.column(ChatSession, 'turn_heartbeat_at')} = %s "
        f"WHERE {db.column(ChatSession, 'id')} = %s AND {db.column(ChatSession, 'turn_started_at')} = %s"
    )


def session_renew_lease(*, session_pk: int, lease_started_at: datetime, now: datetime) -> bool:
    """Renew the lease taken at `lease_started_at`. False when it is no longer this turn's (taken
    for dead and given to another turn) or the session is gone."""
    return db.changed(_renew_statement(), [db.timestamp(now), session_pk, db.timestamp(lease_started_at)])


@functools.cache
def _status_statement(count: int) -> str:
    ids = ", ".join(["%s"] * count)
    return (
        f"UPDATE {db.table(Message)} SET {db.column(Message, 'status')} = %s, {db.column(Message, 'error_code')} = %s "
        f"WHERE {db.column(Message, 'id')} IN ({ids})"
    )


def messages_set_status(*, message_ids: tuple[int, ...], status: str, error_code: str = "") -> None:
    """Set the status of a turn's new messages (one, or a tool result per call)."""
    db.changed(_status_statement(len(message_ids)), [status, error_code, *message_ids])


@functools.cache
def _recount_statement() -> str:
    return (
        f"UPDATE {db.table(Message)} SET {db.column(Message, 'token_count')} = %s, "
        f"{db.column(Message, 'token_encoding')} = %s WHERE {db.column(Message, 'id')} = %s"
    )


def messages_recounted(*, counts: list[tuple[int, int, str]]) -> None:
    """Store (message id, token count, encoding) for messages counted again under another
    model's encoding, so that the next turn does not count them again."""
    with connection.cursor() as cursor:
        rows = [(count, encoding, message_id) for message_id, count, encoding in counts]
        cursor.executemany(_recount_statement(), rows)


# What the prompt builder reads of each stored message (chat.turns.prompt.HistoryMessage).
HISTORY_FIELDS = (
    "id", "role", "content", "token_count", "token_encoding", "parts", "tool_calls", "tool_call_id", "name",
)


@functools.cache
def _history_statement(*, before: bool) -> str:
    columns = ", ".join(db.column(Message, name) for name in HISTORY_FIELDS)
    message_id = db.column(Message, "id")
    older = f" AND {message_id} < %s" if before else ""
    # The shape of chat_message_history_idx: (session, status, id DESC).
    return (
        f"SELECT {columns} FROM {db.table(Message)} "
        f"WHERE {db.column(Message, 'session')} = %s AND {db.column(Message, 'status')} = %s{older} "
        f"ORDER BY {message_id} DESC LIMIT %s"
    )


def history_page(*, session_pk: int, status: str, before_id: int | None, size: int) -> list[tuple[Any, ...]]:
    """Up to `size` rows of HISTORY_FIELDS of the session's messages in `status`, newest first, older
    than `before_id` when given. The JSON fields come as the database gives them (`json_field`)."""
    params: list[Any] = [session_pk, status]
    if before_id is not None:
        params.append(before_id)
    params.append(size)
    with connection.cursor() as cursor:
        cursor.execute(_history_statement(before=before_id is not None), params)
        return cursor.fetchall()


def json_field(model: type, name: str) -> Any:
    """The function that reads a JSON column's raw value as the ORM would (psycopg may give it
    decoded, SQLite as text)."""
    field = model._meta.get_field(name)
    return lambda value: None if value is None else field.from_db_value(value, None, connection)
