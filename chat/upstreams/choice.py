"""Which upstream answers a request, and with whose key (the original design's key selection).

- The client key has an upstream credential assigned by an operator: that credential (its key,
  and its base URL if it has one). Otherwise the server default: OPENAI_API_KEY and
  OPENAI_BASE_URL, or the offline provider when neither is set. Both count as `default`.
- The caller sends its own upstream key (`X-Upstream-Api-Key`, or `api_key` in the body):
  - without `free_mode`, that key alone is used (`user_provided`); if upstream rejects it the
    caller gets the mapped upstream error;
  - with `free_mode`, the key is first checked with one cheap upstream call; if it is valid it
    is used (`user_provided`), otherwise the default is (`default`), and a warning says so.
    The check is made only once the turn is admitted (`upstream_confirm`, after its validation
    and the key's limits), so that a refused request costs no call with a key the caller chose.
    The verdict is cached for BYOK_VERDICT_CACHE_SECONDS under a keyed hash of the key, never
    the key itself; a check that could not decide (upstream down) counts as "not valid" and is
    cached for UNDECIDED_VERDICT_SECONDS, so that an upstream in trouble is not asked on every
    request.

A caller's key is never stored, logged or cached in plain text: it lives in this request's
memory only.
"""

import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.utils.crypto import salted_hmac
from django.utils.translation import gettext as _

from chat.exceptions import UpstreamCredentialUnreadable
from chat.models import ApiKey, UsageRecord
from chat.providers import ChatProvider, get_provider
from chat.providers.openai_compatible import KEY_FROM_CALLER, KEY_FROM_CREDENTIAL, OpenAICompatibleProvider
from chat.upstreams import crypto
from llmserver.cache import cache_get, cache_set

# The name these log lines have always had (operators filter on it), not this module's.
logger = logging.getLogger("chat.upstreams")

_VERDICT_SALT = "llmserver.chat.byok_verdict"
# How long a check that could not decide is remembered.
UNDECIDED_VERDICT_SECONDS = 30
UNDECIDED = "undecided"


@dataclass(frozen=True)
class UpstreamChoice:
    provider: ChatProvider
    key_source: str
    warnings: list[str] = field(default_factory=list)
    # With free_mode: what to use if the caller's key (this choice's) turns out not to be valid,
    # and where its verdict is cached. `upstream_confirm` decides, once the turn is admitted.
    fallback: "UpstreamChoice | None" = None
    verdict_key: str = ""


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


def upstream_choose(*, api_key: ApiKey, user_key: str, free_mode: bool) -> UpstreamChoice:
    """The provider and key source for one request (see the module docstring). With free_mode,
    the caller's key, to be confirmed by `upstream_confirm` before it is used."""
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
    if not free_mode:
        return UpstreamChoice(provider=own, key_source=UsageRecord.KeySource.USER_PROVIDED)
    fallback = UpstreamChoice(
        provider=default.provider,
        key_source=default.key_source,
        warnings=[_("free_mode: your upstream key could not be used, so the server's default key was used.")],
    )
    return UpstreamChoice(
        provider=own, key_source=UsageRecord.KeySource.USER_PROVIDED, fallback=fallback,
        verdict_key=verdict_cache_key(user_key, base_url),
    )


async def upstream_confirm(choice: UpstreamChoice) -> UpstreamChoice:
    """The choice to use: `choice` itself, or, with free_mode, the caller's key if upstream accepts
    it and else the fallback (see the module docstring)."""
    own = choice.provider
    if choice.fallback is None or not isinstance(own, OpenAICompatibleProvider):
        return choice
    verdict = await cache_get(choice.verdict_key)
    if verdict is None:
        valid = await own.key_is_valid()
        verdict = UNDECIDED if valid is None else valid
        timeout = UNDECIDED_VERDICT_SECONDS if valid is None else settings.BYOK_VERDICT_CACHE_SECONDS
        await cache_set(choice.verdict_key, verdict, timeout=timeout)
    if verdict is True:
        return UpstreamChoice(provider=own, key_source=choice.key_source, warnings=choice.warnings)
    return choice.fallback
