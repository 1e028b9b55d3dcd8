"""The turn lease of a session: while a turn waits on upstream, a second turn of the session is
refused with 409 `session_busy` (it would otherwise be answered without seeing the first, and the
history would interleave).

The lease lives in the session's row, so it holds across worker processes and instances: taken
with a conditional UPDATE (`turn_started_at` names the turn holding it, and only that turn's end
releases it), and renewed by the turn while upstream works (`turn_heartbeat_at`, every
`heartbeat_interval_seconds()`). A lease not renewed for CHAT_TURN_LEASE_SECONDS is free: the
process holding it is gone (a restart, a crash, a lost database), and the sweep closes its turn
(chat/turns/sweep.py). A slow upstream does not free it: the turn keeps renewing it until its
deadline (`upstream_deadline_seconds`).
"""

from datetime import datetime, timedelta

from django.conf import settings

# How long a turn may take beyond the longest an upstream call can take (every retry timing out),
# to cover the database writes around it.
TURN_MARGIN_SECONDS = 60
# Room for the waits between retries within one upstream call (see upstream_deadline_seconds).
RETRY_WAIT_ALLOWANCE_SECONDS = 30
# Renewals per lease period: two may be missed (a busy event loop, a slow database) before the
# lease is taken for dead.
HEARTBEATS_PER_LEASE = 3


def upstream_deadline_seconds() -> float:
    """The longest one upstream call may take, retries included. Every attempt may use the whole
    timeout, and the provider waits between attempts (its backoff, or upstream's Retry-After of up
    to 8 s, chat/providers/openai_compatible.py): the call is cut at this deadline."""
    return settings.LLM_TIMEOUT_SECONDS * (settings.LLM_MAX_RETRIES + 1) + RETRY_WAIT_ALLOWANCE_SECONDS


def longest_turn() -> timedelta:
    """The longest a turn can take, database steps included: what an Idempotency-Key's holder may
    keep it locked for (chat/api/idempotency.py)."""
    return timedelta(seconds=upstream_deadline_seconds() + TURN_MARGIN_SECONDS)


def lease_period() -> timedelta:
    return timedelta(seconds=settings.CHAT_TURN_LEASE_SECONDS)


def heartbeat_interval_seconds() -> float:
    return settings.CHAT_TURN_LEASE_SECONDS / HEARTBEATS_PER_LEASE


def lease_dead_before(now: datetime) -> datetime:
    """A lease (or an in-flight usage record) last renewed before this is its dead holder's."""
    return now - lease_period()


def lease_held(turn_heartbeat_at: datetime | None, *, now: datetime) -> bool:
    return turn_heartbeat_at is not None and turn_heartbeat_at >= lease_dead_before(now)
