"""Writes of the client keys: create, change, revoke, rotate, and the playground's own key. Every
change writes the key's audit trail (ApiKeyEvent) in the same transaction."""

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from chat.keys import key_format
from chat.models import (
    MAX_MONTHLY_BUDGET_USD,
    MAX_REQUESTS_PER_MINUTE,
    MAX_TOKENS_PER_DAY,
    ApiKey,
    ApiKeyEvent,
    UpstreamCredential,
)
from llmserver.http.errors import InvalidInput

# Budgets are counted to the hundred-millionth of a dollar, as costs are.
BUDGET_QUANTUM = Decimal("0.00000001")


def _validated_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(ApiKey.Scope.values))
    if unknown or not scopes:
        raise InvalidInput(
            _("Scopes must be one or more of %(allowed)s.") % {"allowed": ", ".join(ApiKey.Scope.values)},
            details={"scopes": unknown},
        )
    # Stored in a fixed order so that equal scope sets compare equal.
    return [scope for scope in ApiKey.Scope.values if scope in scopes]


def _validated_values(values: dict[str, Any]) -> dict[str, Any]:
    """`values` (some of a key's fields) as stored; InvalidInput naming the first that cannot be:
    a name that is empty or too long, a limit that is negative or past its bound, a budget finer
    than a hundred-millionth of a dollar. (The commands and the admin check the same before they
    call: this is the last word, for every caller.)"""
    values = dict(values)
    if "name" in values:
        name = values["name"].strip()
        max_length = ApiKey._meta.get_field("name").max_length
        if not name or len(name) > max_length:
            raise InvalidInput(
                _("A key's name is 1 to %(max)d characters.") % {"max": max_length}, details={"name": values["name"]}
            )
        values["name"] = name
    bounds = {
        "requests_per_minute": MAX_REQUESTS_PER_MINUTE, "tokens_per_day": MAX_TOKENS_PER_DAY,
        "monthly_budget_usd": MAX_MONTHLY_BUDGET_USD,
    }
    for field, maximum in bounds.items():
        value = values.get(field)
        if value is None:
            continue
        if not 0 <= value <= maximum:
            raise InvalidInput(
                _("%(field)s must be from 0 to %(max)s.") % {"field": field, "max": maximum},
                details={field: str(value)},
            )
    budget = values.get("monthly_budget_usd")
    if budget is not None:
        budget = Decimal(budget)
        if budget != budget.quantize(BUDGET_QUANTUM):
            raise InvalidInput(
                _("monthly_budget_usd has at most 8 decimal places (a hundred-millionth of a dollar)."),
                details={"monthly_budget_usd": str(budget)},
            )
        values["monthly_budget_usd"] = budget
    return values


def cleaned_model_names(models: list[str]) -> list[str]:
    return list(dict.fromkeys(model.strip() for model in models if model.strip()))


def _record_key_event(*, api_key: ApiKey, action: str, actor: str, note: str = "") -> None:
    ApiKeyEvent.objects.create(api_key=api_key, action=action, actor=actor, note=note)


def api_key_create(
    *,
    name: str,
    actor: str,
    scopes: list[str] | None = None,
    allowed_models: list[str] | None = None,
    expires_at: datetime | None = None,
    owner: Any = None,
    upstream_credential: UpstreamCredential | None = None,
    requests_per_minute: int | None = None,
    tokens_per_day: int | None = None,
    monthly_budget_usd: Decimal | None = None,
) -> tuple[ApiKey, str]:
    """Create a client key (default scope: chat). Returns the row and the full key, which exists
    nowhere else: show it once and forget it. `actor` says who did it, for the audit trail."""
    checked = _validated_values({
        "name": name, "requests_per_minute": requests_per_minute, "tokens_per_day": tokens_per_day,
        "monthly_budget_usd": monthly_budget_usd,
    })
    raw_key, parsed = key_format.generate_key()
    with transaction.atomic():
        api_key = ApiKey.objects.create(
            key_id=parsed.key_id,
            secret_hash=key_format.hash_secret(parsed.secret),
            last4=raw_key[-4:],
            scopes=_validated_scopes(scopes or [ApiKey.Scope.CHAT]),
            allowed_models=cleaned_model_names(allowed_models or []),
            expires_at=expires_at,
            owner=owner,
            upstream_credential=upstream_credential,
            **checked,
        )
        _record_key_event(api_key=api_key, action=ApiKeyEvent.Action.CREATED, actor=actor)
    return api_key, raw_key


def api_key_update(*, api_key: ApiKey, actor: str, changes: dict[str, Any]) -> ApiKey:
    """Change a key's name, owner, scopes, allowed models, upstream credential, expiry or limits."""
    allowed = {
        "name", "owner", "scopes", "allowed_models", "upstream_credential", "expires_at",
        "requests_per_minute", "tokens_per_day", "monthly_budget_usd",
    }
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"api_key_update cannot change {sorted(unknown)}")
    changes = _validated_values(changes)
    if "scopes" in changes:
        changes = {**changes, "scopes": _validated_scopes(changes["scopes"])}
    if "allowed_models" in changes:
        changes = {**changes, "allowed_models": cleaned_model_names(changes["allowed_models"])}
    if not changes:
        return api_key
    with transaction.atomic():
        for field_name, value in changes.items():
            setattr(api_key, field_name, value)
        api_key.save(update_fields=list(changes))
        _record_key_event(
            api_key=api_key, action=ApiKeyEvent.Action.UPDATED, actor=actor, note=", ".join(sorted(changes))
        )
    return api_key


def api_key_revoke(*, api_key: ApiKey, actor: str) -> bool:
    """Revoke a key: the very next request with it is refused. Returns False when it already was."""
    with transaction.atomic():
        now = timezone.now()
        revoked = ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(
            revoked_at=now, previous_secret_hash="", previous_secret_valid_until=None
        )
        if revoked:
            _record_key_event(api_key=api_key, action=ApiKeyEvent.Action.REVOKED, actor=actor)
    api_key.refresh_from_db()
    return bool(revoked)


def api_key_rotate(*, api_key: ApiKey, actor: str, grace: timedelta = timedelta(0)) -> str:
    """Give the key a new secret and return the new full key. The key keeps its id, so its
    sessions, usage and limits stay with it. The old secret stops at once, or after `grace`."""
    if api_key.revoked_at is not None:
        raise InvalidInput(_("A revoked key cannot be rotated; create a new key instead."))
    raw_key, parsed = key_format.generate_key(key_id=api_key.key_id)
    with transaction.atomic():
        api_key.previous_secret_hash = api_key.secret_hash if grace > timedelta(0) else ""
        api_key.previous_secret_valid_until = timezone.now() + grace if grace > timedelta(0) else None
        api_key.secret_hash = key_format.hash_secret(parsed.secret)
        api_key.last4 = raw_key[-4:]
        api_key.save(update_fields=["secret_hash", "last4", "previous_secret_hash", "previous_secret_valid_until"])
        note = f"old secret valid for {grace}" if grace > timedelta(0) else "old secret stopped at once"
        _record_key_event(api_key=api_key, action=ApiKeyEvent.Action.ROTATED, actor=actor, note=note)
    return raw_key


def api_key_touch(*, api_key: ApiKey) -> None:
    """Keep `last_used_at` fresh with at most one write per key per interval, not one per request."""
    now = timezone.now()
    interval = timedelta(seconds=settings.API_KEY_LAST_USED_INTERVAL_SECONDS)
    if api_key.last_used_at is not None and api_key.last_used_at > now - interval:
        return
    ApiKey.objects.filter(pk=api_key.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lte=now - interval)
    ).update(last_used_at=now)
    api_key.last_used_at = now


def playground_key_for(*, user: Any) -> ApiKey:
    """The client key a staff user's playground chats run under: created on first use, owned by
    the user, scope `chat`. Its secret is never shown (the playground authenticates with the
    admin login), so it cannot be used from outside. Its sessions, usage and limits are those of
    any key; revoking it makes the next playground chat start a new one."""
    name = f"Playground: {user.get_username()}"[: ApiKey._meta.get_field("name").max_length]
    usable = ApiKey.objects.filter(owner=user, name=name, revoked_at__isnull=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
    )
    if (found := usable.order_by("pk").first()) is not None:
        return found
    # First use: the user's row, locked, serialises two requests that both found no key (a page
    # and its first chat), so that exactly one key is created.
    with transaction.atomic():
        list(get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk", flat=True))
        if (found := usable.order_by("pk").first()) is not None:
            return found
        api_key, _raw_key = api_key_create(name=name, actor=f"admin:{user.get_username()}", owner=user)
    return api_key
