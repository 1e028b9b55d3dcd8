"""The turn lease of a session: while a turn waits on upstream, a second turn of the session is
refused with 409 `session_busy` (it would otherwise be answered without seeing the first, and the
history would interleave). The lease is a timestamp taken with a conditional UPDATE, so it holds
across worker processes; it expires on its own after the longest a turn can take, so that a
crashed worker cannot lock a session forever."""

from datetime import datetime, timedelta

from django.conf import settings

# How long a turn's lease lasts beyond the longest an upstream call can take (every retry timing
# out), to cover the database writes around it.
TURN_LEASE_MARGIN_SECONDS = 60
# Room for the waits between retries within one upstream call (see upstream_deadline_seconds).
RETRY_WAIT_ALLOWANCE_SECONDS = 30


def upstream_deadline_seconds() -> float:
    """The longest one upstream call may take, retries included. Every attempt may use the whole
    timeout, and the provider waits between attempts (its backoff, or upstream's Retry-After of up
    to 8 s, chat/providers/openai_compatible.py): the call is cut at this deadline so that a turn
    always ends inside its lease."""
    return settings.LLM_TIMEOUT_SECONDS * (settings.LLM_MAX_RETRIES + 1) + RETRY_WAIT_ALLOWANCE_SECONDS


def turn_lease() -> timedelta:
    return timedelta(seconds=upstream_deadline_seconds() + TURN_LEASE_MARGIN_SECONDS)


def lease_held(turn_started_at: datetime | None, *, now: datetime) -> bool:
    return turn_started_at is not None and turn_started_at >= now - turn_lease()
