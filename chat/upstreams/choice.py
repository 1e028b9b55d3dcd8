"""Which upstream answers a request, and with whose key (the original design's key selection).

- The client key has an upstream credential assigned by an operator: that credential (its key,
  and its base URL if it has one). Otherwise the server default: OPENAI_API_KEY and
  OPENAI_BASE_URL, or the offline provider when neither is set. Both count as `default`.
- The caller sends its own upstream key (`X-Upstream-Api-Key`, or `api_key` in the body):
  - without `free_mode`, that key alone is used (`user_provided`); if upstream rejects it the
    caller gets the mapped upstream error;
  - with `free_mode`, the key is first checked with one cheap upstream call; if it is valid it
    is used (`user_provided`), otherwise the default is (`default`), and a warning says so.
    The verdict is cached for BYOK_VERDICT_CACHE_SECONDS under a keyed hash of the key, never
    the key itself; a check that could not decide (upstream down) is not cached.

A caller's key is never stored, logged or cached in plain text: it lives in this request's
memory only.
"""

import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.core.cache import cache
from django.utils.crypto import salted_hmac
from django.utils.translation import gettext as _

from chat.exceptions import UpstreamCredentialUnreadable
from chat.models import ApiKey, UsageRecord
from chat.providers import ChatProvider, get_provider
from chat.providers.openai_compatible import KEY_FROM_CALLER, KEY_FROM_CREDENTIAL, OpenAICompatibleProvider
from chat.upstreams import crypto

logger = logging.getLogger(__name__)

_VERDICT_SALT = "llmserver.chat.byok_verdict"


@dataclass(frozen=True)
class UpstreamChoice:
    provider: ChatProvider
    key_source: str
    warnings: list[str] = field(default_factory=list)


def _base_url_for(api_key: ApiKey) -> str | None:
    credential = api_key.upstream_credential
    return (credential.base_url if credential else "") or settings.OPENAI_BASE_URL or None


def default_provider_for(api_key: ApiKey) -> ChatProvider:
    """The upstream a client key uses with no key of the caller's own."""
    credential = api_key.upstream_credential
    if credential is None:
        return get_provider()
    try:
        upstream_key = crypto.decrypt(credential.api_key_encrypted)
    except crypto.InvalidToken:
        logger.error(
            "Upstream credential %r cannot be decrypted with FIELD_ENCRYPTION_KEYS (was its key removed "
            "before reencrypt_upstream_credentials ran?)", credential.name,
        )
        raise UpstreamCredentialUnreadable() from None
    return OpenAICompatibleProvider(
        api_key=upstream_key,
        base_url=_base_url_for(api_key),
        timeout=settings.LLM_TIMEOUT_SECONDS,
        max_retries=settings.LLM_MAX_RETRIES,
        key_origin=KEY_FROM_CREDENTIAL,
    )


def verdict_cache_key(user_key: str, base_url: str | None) -> str:
    """Where a free-mode verdict is cached: a keyed hash of the key and the upstream it was
    checked against (a key good for one upstream says nothing of another), never the key."""
    material = f"{base_url or ''}\n{user_key}"
    return "byok-verdict:" + salted_hmac(_VERDICT_SALT, material, algorithm="sha256").hexdigest()


async def upstream_choose(*, api_key: ApiKey, user_key: str, free_mode: bool) -> UpstreamChoice:
    """The provider and key source for one request (see the module docstring)."""
    default = UpstreamChoice(provider=default_provider_for(api_key), key_source=UsageRecord.KeySource.DEFAULT)
    if not user_key:
        return default
    base_url = _base_url_for(api_key)
    own = OpenAICompatibleProvider(
        api_key=user_key,
        base_url=base_url,
        timeout=settings.LLM_TIMEOUT_SECONDS,
        max_retries=settings.LLM_MAX_RETRIES,
        key_origin=KEY_FROM_CALLER,
    )
    chosen = UpstreamChoice(provider=own, key_source=UsageRecord.KeySource.USER_PROVIDED)
    if not free_mode:
        return chosen
    cache_key = verdict_cache_key(user_key, base_url)
    valid = await cache.aget(cache_key)
    if valid is None:
        valid = await own.key_is_valid()
        if valid is not None:
            await cache.aset(cache_key, valid, timeout=settings.BYOK_VERDICT_CACHE_SECONDS)
    if valid:
        return chosen
    return UpstreamChoice(
        provider=default.provider,
        key_source=default.key_source,
        warnings=[_("free_mode: your upstream key could not be used, so the server's default key was used.")],
    )
