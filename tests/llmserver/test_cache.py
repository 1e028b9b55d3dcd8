"""The cache as something that may fail (llmserver/cache.py): Redis gone, or Redis that accepts a
connection and never answers, is a miss, counted and logged, never a failed request."""

import socket
import threading
from collections.abc import Iterator

import pytest
from rest_framework.test import APIClient

from llmserver.cache import cache_errors
from tests.support.fake_upstream import FakeUpstream
from tests.support.personas import Persona
from tests.support.processes import free_port


def redis_at(settings, port: int) -> None:
    settings.CACHES = {"default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": f"redis://127.0.0.1:{port}/0",
        "OPTIONS": {"socket_timeout": 0.2, "socket_connect_timeout": 0.2},
    }}


@pytest.fixture
def silent_redis() -> Iterator[int]:
    """A port that accepts connections and never says a word, as a Redis that hangs does."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def errors_counted() -> float:
    return sum(sample.value for metric in cache_errors.collect() for sample in metric.samples
               if sample.name.endswith("_total"))


@pytest.mark.parametrize("redis", ["gone", "silent"])
def test_free_mode_works_with_the_cache_failing(
    alice: Persona, fake_upstream: FakeUpstream, settings, byok_key: str, silent_redis: int, redis: str
) -> None:
    redis_at(settings, free_port() if redis == "gone" else silent_redis)
    before = errors_counted()

    response = alice.client.post(
        "/api/v1/chat", {"user_message": "Hi", "api_key": byok_key, "free_mode": True}, format="json"
    )

    assert (response.status_code, response.json()["key_source"]) == (200, "user_provided")
    # The verdict could be neither read nor kept: one failed get, one failed set.
    assert errors_counted() - before == 2
    assert [r.path for r in fake_upstream.requests] == ["/v1/models", "/v1/chat/completions"]


def test_the_failure_is_logged_once_a_minute_not_once_a_request(
    alice: Persona, fake_upstream: FakeUpstream, settings, byok_key: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmserver import cache

    monkeypatch.setattr(cache, "_last_logged", -float(cache.LOG_INTERVAL_SECONDS))
    redis_at(settings, free_port())
    for _ in range(3):
        alice.client.post("/api/v1/chat", {"user_message": "Hi", "api_key": byok_key, "free_mode": True},
                          format="json")

    logged = [r.getMessage() for r in caplog.records if r.name == "llmserver.cache"]
    assert len(logged) == 1 and logged[0].startswith("the cache failed (get: ")


def test_ready_names_the_features_a_failed_cache_degrades(db: None, settings) -> None:
    redis_at(settings, free_port())

    body = APIClient().get("/api/v1/system/ready").json()

    assert (body["status"], body["degraded"]) == ("degraded", ["cache"])
