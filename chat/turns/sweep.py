"""Closing the turns whose process went away: a restart or a deploy with turns in flight, a crash, a
database lost mid-turn. Such a turn stopped renewing its usage record's heartbeat; once that is
older than CHAT_TURN_LEASE_SECONDS, `turns_interrupted_close` closes the record as interrupted
(with the tokens known by its last heartbeat), marks its question failed, and releases its
session's lease if the turn still holds it.

Every server process runs it periodically (`Sweeper`, started by llmserver/asgi.py), and
`manage.py close_interrupted_turns` runs it once. It is safe across processes and instances: each record is
closed by a conditional UPDATE, which only one of them passes.
"""

import asyncio
import logging
import random
from datetime import datetime

from django.db import transaction
from django.db.models import F, Min
from django.utils import timezone

from chat.models import ChatSession, Message, UsageRecord
from chat.sessions.lease import lease_dead_before, lease_period
from chat.usage.services import INTERRUPTED, usage_interrupt
from llmserver.db import in_thread

logger = logging.getLogger(__name__)

# Records closed per transaction: a sweep after a long outage must not hold its locks for long.
BATCH_SIZE = 100


def turns_interrupted_close(*, now: datetime | None = None) -> int:
    """Close every in-flight turn whose heartbeat stopped (see the module's docstring). Returns how
    many were closed here."""
    now = now or timezone.now()
    dead_before = lease_dead_before(now)
    closed = 0
    while True:
        # Served by chat_usage_in_flight_idx, which holds only the records in flight.
        batch = list(
            UsageRecord.objects.filter(outcome=UsageRecord.Outcome.IN_FLIGHT, heartbeat_at__lt=dead_before)
            .order_by("heartbeat_at")[:BATCH_SIZE]
        )
        if not batch:
            break
        with transaction.atomic():
            for record in batch:
                if _close(record=record, now=now, dead_before=dead_before):
                    closed += 1
        if len(batch) < BATCH_SIZE:
            break
    if closed:
        logger.warning("closed %d turn(s) interrupted by the end of their process", closed)
    return closed


def _close(*, record: UsageRecord, now: datetime, dead_before: datetime) -> bool:
    if not usage_interrupt(record=record, now=now, dead_before=dead_before):
        return False
    if record.user_message_id is not None:
        # The turn's new messages: its first (the user's, or its first tool result) and those stored
        # after it with it, while the turn held the session's lease; all still pending. A later turn,
        # which took the lease once it was dead, stored its own after them: those are not this one's.
        later_turn_first = UsageRecord.objects.filter(
            session_id=record.session_id, user_message_id__gt=record.user_message_id
        ).aggregate(first=Min("user_message_id"))["first"]
        turn_messages = Message.objects.filter(
            session_id=record.session_id, pk__gte=record.user_message_id, status=Message.Status.PENDING
        )
        if later_turn_first is not None:
            turn_messages = turn_messages.filter(pk__lt=later_turn_first)
        turn_messages.update(
            status=Message.Status.FAILED, error_code=INTERRUPTED
        )
    if record.session_id is not None:
        # The session's totals hold its calls' tokens, this one's as the record now says.
        ChatSession.objects.filter(pk=record.session_id).update(
            prompt_tokens_total=F("prompt_tokens_total") + record.prompt_tokens,
            completion_tokens_total=F("completion_tokens_total") + record.completion_tokens,
        )
        # The lease is free already (its heartbeat stopped with the turn's): clear it, unless
        # another turn has taken it since.
        ChatSession.objects.filter(pk=record.session_id, turn_heartbeat_at__lt=dead_before).update(
            turn_started_at=None, turn_heartbeat_at=None
        )
    return True


class Sweeper:
    """The sweep, run by a server process every half lease period (with a random offset, so that
    the processes of a deployment do not all sweep at once) for as long as it serves."""

    def __init__(self) -> None:
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        interval = lease_period().total_seconds() / 2
        await asyncio.sleep(random.uniform(0, interval))
        while True:
            try:
                await in_thread(turns_interrupted_close, urgent=True)()
            except Exception as exc:  # noqa: BLE001 - a failed sweep (the database down) is tried again
                # One line: the database being away is no bug, and the sweep runs every few seconds.
                logger.warning("the sweep of interrupted turns failed (%s: %s)", type(exc).__name__, exc)
            await asyncio.sleep(interval)
