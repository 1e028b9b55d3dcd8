"""Reads of the client keys, each next to the index that serves it."""

from django.db.models import QuerySet, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from chat.exceptions import ApiKeyNotFound
from chat.keys import key_format
from chat.models import ApiKey


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The usable key for a presented key string, or None for any bad key: malformed, wrong
    checksum, unknown, wrong secret, revoked or expired all look the same to the caller.

    A malformed key or a bad checksum is rejected without a query. Lookups are not cached: one
    indexed query per request is cheap, and revocation is then immediate by construction.
    The secret is compared in constant time with the stored hash (and, during a rotation's grace
    period, with the previous one).
    """
    parsed = key_format.parse_key(raw_key)
    if parsed is None:
        return None
    api_key = ApiKey.objects.select_related("upstream_credential").filter(key_id=parsed.key_id).first()
    if api_key is None:
        return None
    now = timezone.now()
    if api_key.status_at(now) != ApiKey.Status.ACTIVE:
        return None
    if key_format.secret_matches(parsed.secret, api_key.secret_hash):
        return api_key
    in_grace = api_key.previous_secret_valid_until is not None and api_key.previous_secret_valid_until > now
    if in_grace and key_format.secret_matches(parsed.secret, api_key.previous_secret_hash):
        return api_key
    return None


def api_key_get(*, key_id: str) -> ApiKey:
    """The key with this public id. Raises ApiKeyNotFound."""
    api_key = ApiKey.objects.filter(key_id=key_id).first()
    if api_key is None:
        raise ApiKeyNotFound(details={"key_id": key_id})
    return api_key


def api_key_list() -> QuerySet[ApiKey]:
    """Every key, newest first, with the tokens it has used, from the daily roll-ups: the raw
    records may have been pruned, and summing them would read every call ever made."""
    return ApiKey.objects.annotate(
        total_tokens=Coalesce(Sum("usage_days__total_tokens"), 0)
    ).order_by("-created_at", "-id")
