"""The cache, as something that may fail: every error is a miss.

The cache (Redis with REDIS_URL, so that several processes and instances share it) holds only what
can be lost and found again: a lost entry costs work, never a wrong answer. So a cache that fails
(Redis down, or accepting connections and never answering: REDIS_TIMEOUT_SECONDS bounds the wait)
must not fail the request that asked it: reading gives nothing, writing does nothing. Each failure
is counted in /metrics (llmserver_cache_errors_total) and logged, once a minute at most, so that
an outage is seen without a line per request.
"""

import logging
import time
from typing import Any

from django.core.cache import cache
from prometheus_client import Counter

logger = logging.getLogger(__name__)

LOG_INTERVAL_SECONDS = 60
cache_errors = Counter("llmserver_cache_errors_total", "Cache operations that failed (each one a miss).", ["operation"])
_last_logged = -float(LOG_INTERVAL_SECONDS)


def _failed(operation: str, exc: Exception) -> None:
    global _last_logged
    cache_errors.labels(operation=operation).inc()
    now = time.monotonic()
    if now - _last_logged >= LOG_INTERVAL_SECONDS:
        _last_logged = now
        logger.warning("the cache failed (%s: %s); it is read as empty until it answers again", operation, exc)


async def cache_get(key: str) -> Any:
    """The cached value, or None when there is none or the cache failed."""
    try:
        return await cache.aget(key)
    except Exception as exc:  # noqa: BLE001 - any failure of the cache is a miss
        _failed("get", exc)
        return None


async def cache_set(key: str, value: Any, *, timeout: float) -> None:
    """Keep `value` for `timeout` seconds, if the cache answers."""
    try:
        await cache.aset(key, value, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any failure of the cache is a lost write
        _failed("set", exc)
