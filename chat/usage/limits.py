"""Per-key limits that hold across every worker process: requests per minute, tokens per day,
and a monthly cost budget, each over a fixed UTC window (a minute, a day, a calendar month).

A turn reserves its worst case before the upstream call — one request; its prompt tokens plus
`max_tokens`; the cost of those at the model's price — with a conditional UPDATE that only
succeeds while `used + amount <= limit`. The database applies it atomically, so concurrent turns
cannot overshoot, on SQLite and PostgreSQL alike, however many processes there are. The turn's
end settles tokens and cost to what upstream reported. The functions run inside the services'
transactions: a refused reservation rolls back everything the turn had written.

Budgets fail closed: a key with a budget may use only a model with a price (chat/usage/pricing.py),
since a model without one would cost nothing and never be stopped.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils.translation import gettext as _

from chat.exceptions import LimitExceeded, ModelNotPriced
from chat.models import ApiKey, LimitCounter
from chat.usage.pricing import price_of, usage_cost

Limit = LimitCounter.Limit


@dataclass(frozen=True)
class Reservation:
    limit: str
    window_start: datetime
    amount: Decimal

    def stored(self) -> list[str]:
        """As a usage record keeps it (UsageRecord.reservations), for whoever closes the record."""
        return [self.limit, self.window_start.isoformat(), str(self.amount)]

    @classmethod
    def from_stored(cls, stored: list[str]) -> "Reservation":
        limit, window_start, amount = stored
        return cls(limit=limit, window_start=datetime.fromisoformat(window_start), amount=Decimal(amount))


def limits_of(api_key: ApiKey) -> dict[str, Decimal]:
    """The key's limits that apply (the key's own, else the server default), without the unlimited."""
    chosen = {
        Limit.REQUESTS_PER_MINUTE: api_key.requests_per_minute
        if api_key.requests_per_minute is not None else settings.LIMIT_REQUESTS_PER_MINUTE,
        Limit.TOKENS_PER_DAY: api_key.tokens_per_day
        if api_key.tokens_per_day is not None else settings.LIMIT_TOKENS_PER_DAY,
        Limit.MONTHLY_BUDGET: api_key.monthly_budget_usd
        if api_key.monthly_budget_usd is not None else settings.LIMIT_MONTHLY_BUDGET_USD,
    }
    return {limit: Decimal(str(value)) for limit, value in chosen.items() if value}


def window_of(limit: str, now: datetime) -> tuple[datetime, datetime]:
    """The fixed UTC window holding `now`: (start, end)."""
    now = now.astimezone(dt_timezone.utc)
    if limit == Limit.REQUESTS_PER_MINUTE:
        start = now.replace(second=0, microsecond=0)
        return start, start + timedelta(minutes=1)
    if limit == Limit.TOKENS_PER_DAY:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, (start + timedelta(days=32)).replace(day=1)


def _take(*, api_key_id: int, limit: str, window_start: datetime, amount: Decimal, maximum: Decimal) -> bool:
    counters = LimitCounter.objects.filter(api_key_id=api_key_id, limit=limit, window_start=window_start)
    if counters.filter(used__lte=maximum - amount).update(used=F("used") + amount):
        return True
    if amount > maximum:
        return False
    try:
        # The window's first use. Two at once: the unique constraint lets one insert win, and
        # the other goes back to the conditional update.
        with transaction.atomic():
            LimitCounter.objects.create(api_key_id=api_key_id, limit=limit, window_start=window_start, used=amount)
    except IntegrityError:
        return bool(counters.filter(used__lte=maximum - amount).update(used=F("used") + amount))
    # Earlier windows are over and never read again: the table keeps one row per key and limit.
    LimitCounter.objects.filter(api_key_id=api_key_id, limit=limit, window_start__lt=window_start).delete()
    return True


def _worst_case(limit: str, *, model: str, prompt_tokens: int, max_tokens: int) -> Decimal:
    if limit == Limit.REQUESTS_PER_MINUTE:
        return Decimal(1)
    if limit == Limit.TOKENS_PER_DAY:
        return Decimal(prompt_tokens + max_tokens)
    return usage_cost(model=model, prompt_tokens=prompt_tokens, completion_tokens=max_tokens)


def _check_priced(*, model: str, maximum: Decimal) -> None:
    if price_of(model) is None:
        raise ModelNotPriced(
            _(
                "This API key has a monthly budget of $%(maximum)s, and the model %(model)s has no price, so its "
                "cost could not be counted; use a model with a price, or ask the operator to price it."
            ) % {"maximum": _amount(maximum), "model": model},
            details={"model": model, "limit": Limit.MONTHLY_BUDGET},
        )


def check_room(*, api_key: ApiKey, model: str, prompt_tokens_at_least: int, max_tokens: int, now: datetime) -> None:
    """Refuse at once a turn that cannot fit in the key's token or budget limits whatever its
    history: its prompt has `prompt_tokens_at_least` (the new message, with no history at all).
    Cheaper than `reserve`, which needs the whole prompt counted: a key over its limit must not
    cost a read of a long session's history on every refused turn. Raises LimitExceeded (or
    ModelNotPriced); reserves nothing."""
    applying = {limit: maximum for limit, maximum in limits_of(api_key).items() if limit != Limit.REQUESTS_PER_MINUTE}
    if not applying:
        return
    if Limit.MONTHLY_BUDGET in applying:
        _check_priced(model=model, maximum=applying[Limit.MONTHLY_BUDGET])
    windows = {limit: window_of(limit, now) for limit in applying}
    used = {
        counter.limit: counter.used
        for counter in LimitCounter.objects.filter(api_key_id=api_key.pk, limit__in=list(applying)).only(
            "limit", "window_start", "used"
        )
        if counter.window_start == windows[counter.limit][0]
    }
    for limit, maximum in applying.items():
        needed = _worst_case(limit, model=model, prompt_tokens=prompt_tokens_at_least, max_tokens=max_tokens)
        if used.get(limit, Decimal(0)) + needed > maximum:
            raise _exceeded(limit=limit, maximum=maximum, needed=needed, resets_at=windows[limit][1], now=now)


def reserve(
    *, api_key: ApiKey, model: str, prompt_tokens: int, max_tokens: int, now: datetime
) -> list[Reservation]:
    """Reserve the turn's worst case (one request; prompt plus `max_tokens` tokens; their cost)
    against the limits that apply to the key. A key without limits costs no query at all.

    Raises LimitExceeded naming the first limit that would be passed, or ModelNotPriced when the
    key has a budget and the model no price; the caller's transaction then rolls back the
    reservations already taken.
    """
    reservations = []
    applying = limits_of(api_key)
    if Limit.MONTHLY_BUDGET in applying:
        _check_priced(model=model, maximum=applying[Limit.MONTHLY_BUDGET])
    for limit, maximum in applying.items():
        amount = _worst_case(limit, model=model, prompt_tokens=prompt_tokens, max_tokens=max_tokens)
        window_start, window_end = window_of(limit, now)
        if not _take(api_key_id=api_key.pk, limit=limit, window_start=window_start, amount=amount, maximum=maximum):
            raise _exceeded(limit=limit, maximum=maximum, needed=amount, resets_at=window_end, now=now)
        reservations.append(Reservation(limit=limit, window_start=window_start, amount=amount))
    return reservations


def settle(*, api_key_id: int, reservations: list[Reservation], tokens: int, cost: Decimal) -> None:
    """Replace the reserved tokens and cost with what was used. Requests stay counted. (A record
    closed twice, by the sweep and then by its turn, settles again from what the first close
    counted: pass that as the reservations' amounts.)"""
    actual = {Limit.TOKENS_PER_DAY: Decimal(tokens), Limit.MONTHLY_BUDGET: cost}
    for reservation in reservations:
        if reservation.limit in actual:
            LimitCounter.objects.filter(
                api_key_id=api_key_id, limit=reservation.limit, window_start=reservation.window_start
            ).update(used=F("used") + actual[reservation.limit] - reservation.amount)


def _exceeded(*, limit: str, maximum: Decimal, needed: Decimal, resets_at: datetime, now: datetime) -> LimitExceeded:
    seconds = max(1, int((resets_at - now).total_seconds() + 0.999))
    details = {"limit": limit, "maximum": str(maximum), "resets_at": resets_at.isoformat()}
    if limit == Limit.REQUESTS_PER_MINUTE:
        message = _(
            "This API key may send %(maximum)d chat requests per minute; the limit resets in %(seconds)d seconds."
        ) % {"maximum": maximum, "seconds": seconds}
    elif limit == Limit.TOKENS_PER_DAY:
        message = _(
            "This API key may use %(maximum)d tokens per day (UTC), and this request could need %(needed)d more "
            "(its prompt plus max_tokens); the limit resets at %(reset)s UTC."
        ) % {"maximum": maximum, "needed": needed, "reset": f"{resets_at:%Y-%m-%d %H:%M}"}
    else:
        message = _(
            "This API key's monthly budget of $%(maximum)s would be passed by this request's worst case "
            "($%(needed)s); the budget resets at %(reset)s UTC."
        ) % {"maximum": _amount(maximum), "needed": f"{needed:.6f}", "reset": f"{resets_at:%Y-%m-%d %H:%M}"}
    return LimitExceeded(message, error_code=f"limit_{limit}", details=details, retry_after=seconds)


def _amount(usd: Decimal) -> str:
    """A budget as people write it: cents at least, and every digit it has beyond them."""
    return f"{usd:.2f}" if usd == usd.quantize(Decimal("0.01")) else f"{usd.normalize():f}"
