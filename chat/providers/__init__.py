"""Upstream model providers: one small interface (base.ChatProvider), two implementations.

`get_provider()` reads the settings on every call, so that tests (and operators reloading
settings) switch providers without restarting anything; the objects are cheap, and the
expensive part, the HTTP client and its connection pool, is cached by the provider itself.
"""

import logging
from urllib.parse import urlsplit

from django.conf import settings

from chat.providers.base import ChatProvider, Completion, CompletionRequest, StreamDelta
from chat.providers.offline import OFFLINE_MODEL_NAME, OfflineProvider
from chat.providers.openai_compatible import OpenAICompatibleProvider

logger = logging.getLogger(__name__)

__all__ = [
    "ChatProvider", "Completion", "CompletionRequest", "StreamDelta", "default_model", "get_provider",
    "log_provider_configuration", "upstream_configured",
]


def upstream_configured() -> bool:
    """True when an upstream is configured; otherwise the offline provider answers."""
    return bool(settings.OPENAI_API_KEY or settings.OPENAI_BASE_URL)


# The model asked for when neither the request nor the session names one and no
# LLM_DEFAULT_MODEL is set: a small, cheap OpenAI model.
FALLBACK_UPSTREAM_MODEL = "gpt-4o-mini"


def default_model() -> str:
    if settings.LLM_DEFAULT_MODEL:
        return settings.LLM_DEFAULT_MODEL
    return FALLBACK_UPSTREAM_MODEL if upstream_configured() else OFFLINE_MODEL_NAME


def get_provider() -> ChatProvider:
    if not upstream_configured():
        return OfflineProvider()
    return OpenAICompatibleProvider(
        api_key=settings.OPENAI_API_KEY,
        base_url=settings.OPENAI_BASE_URL or None,
        timeout=settings.LLM_TIMEOUT_SECONDS,
        max_retries=settings.LLM_MAX_RETRIES,
    )


def log_provider_configuration() -> None:
    """Say at start-up which provider answers, and how to change it. Never logs a key."""
    if upstream_configured():
        base_url = settings.OPENAI_BASE_URL or "https://api.openai.com/v1"
        logger.info("Upstream model provider: %s, default model %s", urlsplit(base_url).netloc, default_model())
    else:
        logger.warning(
            "No upstream model is configured: the offline provider answers every chat. It is not a "
            "language model. Set OPENAI_BASE_URL (any OpenAI-compatible server) and/or "
            "OPENAI_API_KEY to chat with a real model."
        )
