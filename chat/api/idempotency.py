"""`Idempotency-Key` on `POST /api/v1/chat`, with Stripe's semantics.

A client that did not hear the answer (a timeout, a dropped connection) sends the same request
again with the same key and gets the stored response: the turn is not run twice, the model is
not asked twice, nothing is billed twice. In detail:
- the same key with the same body replays the stored response (status and body), marked with
  `Idempotent-Replayed: true`; with a different body it is refused (422);
- requests with a key that is still being answered wait for its response (10 at once make one
  turn), up to the longest a turn can take (sessions/lease.py's longest_turn: 270 s with the
  defaults); a worker that died mid-turn holds the key no longer than that (not the shorter
  heartbeat lease: the key is not renewed while its turn runs);
- a response is stored once the model answered: its answer, or its failure (as Stripe stores its
  500s). A request refused before that (validation, limits, a busy session), one upstream never
  took up (unreachable, rate limited, a rejected key: asking again later is the point), or one cut
  off by the client stores nothing, so the same key may be sent again;
- keys belong to the client key that sent them and are kept for 24 hours (`prune_idempotency_keys`
  deletes older ones; an expired key is also simply reused).
"""

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.translation import gettext as _

from chat.exceptions import IdempotencyKeyInUse, IdempotencyKeyReused
from chat.models import ApiKey, IdempotentRequest
from chat.sessions.lease import longest_turn
from llmserver.db import delete_in_batches, in_thread
from llmserver.http.errors import InvalidInput

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
# The module's old name: changing the salt would change the hash of every stored request.
HASH_SALT = "chat.idempotency.request_hash"
REPLAYED_HEADER = "Idempotent-Replayed"
KEPT_FOR = timedelta(hours=24)
MAX_KEY_LENGTH = 255
# Polling for the response of a request still running: quick at first (most turns take a second
# or two), then no more often than this.
FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Claim:
    """This request holds the key: it runs, then stores its response or releases the key.
    `locked_until` is also the claim's token: a holder that outlived its lock and was taken over
    can no longer store or release (both match it)."""

    row_id: int
    locked_until: datetime


def idempotency_key_from(headers: Any) -> str | None:
    """The request's Idempotency-Key, checked, or None when it sent none."""
    key = headers.get(IDEMPOTENCY_KEY_HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        message = _("An Idempotency-Key is 1 to %(max)d printable ASCII characters.") % {"max": MAX_KEY_LENGTH}
        raise InvalidInput(message, details={IDEMPOTENCY_KEY_HEADER: [message]})
    return key


def request_hash(data: Any) -> str:
    """The body as canonical JSON, hashed: key order and spacing do not make a different request.
    Keyed (HMAC with SECRET_KEY), as everything derived from a caller's own upstream key is here:
    the body may carry one (`api_key`)."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return salted_hmac(HASH_SALT, canonical, algorithm="sha256").hexdigest()


def idempotency_claim(*, api_key: ApiKey, key: str, body_hash: str) -> Claim | StoredResponse | None:
    """Take the key for this request (a Claim), or the response stored under it, or None while
    another request holding it is still running. Raises IdempotencyKeyReused for another body."""
    now = timezone.now()
    locked_until = now + longest_turn()
    # Read first (waiters poll here), insert when there is nothing; twice, because a row can be
    # inserted, expire or be released between the two.
    for _attempt in range(2):
        row = IdempotentRequest.objects.filter(api_key=api_key, key=key).first()
        if row is None:
            try:
                with transaction.atomic():
                    row = IdempotentRequest.objects.create(
                        api_key=api_key, key=key, request_hash=body_hash, locked_until=locked_until, created_at=now
                    )
                return Claim(row_id=row.pk, locked_until=locked_until)
            except IntegrityError:
                continue
        if row.created_at <= now - KEPT_FOR:
            IdempotentRequest.objects.filter(pk=row.pk, created_at=row.created_at).delete()
            continue
        if row.request_hash != body_hash:
            raise IdempotencyKeyReused(details={"idempotency_key": key})
        if row.response_status is not None:
            return StoredResponse(status=row.response_status, body=json.loads(row.response_body))
        # The holder died mid-turn: the first request to see its lock run out takes the key over.
        # (A row without a response always has a lock: the two are cleared together.)
        if row.locked_until <= now and IdempotentRequest.objects.filter(
            pk=row.pk, response_status__isnull=True, locked_until=row.locked_until
        ).update(locked_until=locked_until):
            return Claim(row_id=row.pk, locked_until=locked_until)
        return None
    return None


def idempotency_store(*, claim: Claim, status: int, body: dict[str, Any]) -> None:
    IdempotentRequest.objects.filter(pk=claim.row_id, locked_until=claim.locked_until).update(
        response_status=status, response_body=json.dumps(body), locked_until=None
    )


def idempotency_release(*, claim: Claim) -> None:
    """The request ended before the model was asked (or the client left): the key is free again."""
    IdempotentRequest.objects.filter(pk=claim.row_id, locked_until=claim.locked_until).delete()


def idempotency_prune() -> int:
    """Delete keys older than 24 hours. Returns how many."""
    return delete_in_batches(IdempotentRequest.objects.filter(created_at__lte=timezone.now() - KEPT_FOR))


async def idempotency_begin(*, api_key: ApiKey, key: str, body_hash: str) -> Claim | StoredResponse:
    """Claim the key, or wait while the request holding it runs and return its response.
    Raises IdempotencyKeyInUse if that takes longer than a turn can."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + longest_turn().total_seconds()
    pause = FIRST_POLL_SECONDS
    while True:
        outcome = await in_thread(idempotency_claim)(api_key=api_key, key=key, body_hash=body_hash)
        if outcome is not None:
            return outcome
        if loop.time() + pause > deadline:
            raise IdempotencyKeyInUse(details={"idempotency_key": key})
        await asyncio.sleep(pause)
        pause = min(pause * 2, MAX_POLL_SECONDS)


async def idempotency_end(*, claim: Claim | None, response: StoredResponse | None) -> None:
    """Store the response, or release the key when there is none to store (nothing to do without a
    claim). Shielded: a client that goes away now must not leave the key locked until
    `locked_until` (the longest a turn can take)."""
    if claim is None:
        return
    if response is None:
        step = in_thread(idempotency_release, urgent=True)(claim=claim)
    else:
        step = in_thread(idempotency_store, urgent=True)(claim=claim, status=response.status, body=response.body)
    await asyncio.shield(step)


@asynccontextmanager
async def ended_if_failed(
    claim: Claim | None, *, stored: Callable[[BaseException], StoredResponse | None]
) -> AsyncIterator[None]:
    """Run the block; if it raises (the client leaving included), end the claim with what
    `stored` keeps of the failure, and raise on."""
    try:
        yield
    except BaseException as exc:
        await idempotency_end(claim=claim, response=stored(exc))
        raise
