"""Shared fixtures. The people: alice owns keys and sessions; bob is another client app and must
see nothing of alice's.

Upstream is never mocked: `fake_upstream` is a real OpenAI-compatible HTTP server on 127.0.0.1
that the server's own `openai` SDK client talks to.

Secrets are watched across the whole suite: after every test that used alice or bob, or a
caller's own upstream key (`byok_key`), their keys must appear in no database row, no log record
and no response body or header that the test received.
"""

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from django.apps import apps
from django.core.cache import cache
from django.utils import timezone
from rest_framework.test import APIClient

from chat import keys
from chat.models import ApiKey
from chat.services import api_key_create
from tests.fake_upstream import FakeUpstream

# The module-scoped real-server fixtures (serve, offline_server, upstream_server).
pytest_plugins = ["tests.served"]

UPSTREAM_TEST_KEY = "sk-upstream-test-key-0000"
# A caller's own upstream key (bring your own key), watched like a client key.
BYOK_SENTINEL = "sk-byok-SENTINEL-4f1c9e2b7a6d5c3e8f0a1b2c3d4e5f60"

# Every response the personas' clients received during the current test.
_responses: list[Any] = []


class RecordingClient(APIClient):
    """An APIClient that keeps every response, so that they can be searched for secrets."""

    def request(self, **kwargs: Any) -> Any:
        response = super().request(**kwargs)
        _responses.append(response)
        return response


@dataclass
class Persona:
    """A client app: its key row, the key it was given, and an HTTP client that sends it."""

    api_key: ApiKey
    raw_key: str
    client: APIClient


def make_persona(name: str) -> Persona:
    api_key, raw_key = api_key_create(name=name, actor="test")
    client = RecordingClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return Persona(api_key=api_key, raw_key=raw_key, client=client)


def database_text() -> str:
    """Every row of every table, as text."""
    return "\n".join(repr(row) for model in apps.get_models() for row in model.objects.values_list())


def assert_secrets_absent(secrets: list[str], caplog: pytest.LogCaptureFixture) -> None:
    stored = database_text()
    logged = "\n".join(record.getMessage() for record in caplog.records) + caplog.text
    answered = "\n".join(
        response.content.decode("utf-8", "replace") + repr(sorted(response.items())) for response in _responses
    )
    for secret in secrets:
        assert secret not in stored, "a secret is stored in the database"
        assert secret not in logged, "a secret was logged"
        assert secret not in answered, "a secret was sent back in a response"


def watched_persona(name: str, caplog: pytest.LogCaptureFixture) -> Iterator[Persona]:
    caplog.set_level(logging.DEBUG)
    persona = make_persona(name)
    yield persona
    assert_secrets_absent([persona.raw_key, keys.parse_key(persona.raw_key).secret], caplog)


@pytest.fixture(autouse=True)
def isolated_from_the_machine(settings: pytest.FixtureRequest) -> None:
    """Whatever the machine's environment (or a developer's `.env`) says, tests start with a cache
    of their own, no server-wide limits and closed metrics: with REDIS_URL set, clearing the
    cache below would flush the developer's Redis database."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    settings.LIMIT_REQUESTS_PER_MINUTE = 0
    settings.LIMIT_TOKENS_PER_DAY = 0
    settings.LIMIT_MONTHLY_BUDGET_USD = 0.0
    settings.METRICS_PUBLIC = False


@pytest.fixture(autouse=True)
def fresh_state(isolated_from_the_machine: None) -> None:
    """Each test starts with no recorded responses and an empty cache."""
    _responses.clear()
    cache.clear()


@pytest.fixture(autouse=True)
def offline_by_default(settings: pytest.FixtureRequest) -> None:
    """Whatever the machine's environment says, tests start with no upstream configured."""
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    settings.LLM_DEFAULT_MODEL = ""
    settings.LLM_MAX_RETRIES = 0
    settings.LLM_TIMEOUT_SECONDS = 5.0


@pytest.fixture
def alice(db: None, caplog: pytest.LogCaptureFixture) -> Iterator[Persona]:
    yield from watched_persona("alice's app", caplog)


@pytest.fixture
def bob(db: None, caplog: pytest.LogCaptureFixture) -> Iterator[Persona]:
    yield from watched_persona("bob's app", caplog)


@pytest.fixture
def byok_key(db: None, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture) -> Iterator[str]:
    """A caller's own upstream key that the fake upstream accepts; watched for leaks."""
    caplog.set_level(logging.DEBUG)
    fake_upstream.extra_keys.add(BYOK_SENTINEL)
    yield BYOK_SENTINEL
    assert_secrets_absent([BYOK_SENTINEL], caplog)


@pytest.fixture(scope="session")
def fake_upstream_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream(api_key=UPSTREAM_TEST_KEY).start()
    yield server
    server.stop()


@pytest.fixture
def fake_upstream(fake_upstream_server: FakeUpstream, settings: pytest.FixtureRequest) -> FakeUpstream:
    """The server under test pointed at the fake upstream, which starts each test empty."""
    fake_upstream_server.reset()
    settings.OPENAI_BASE_URL = fake_upstream_server.base_url
    settings.OPENAI_API_KEY = UPSTREAM_TEST_KEY
    settings.LLM_DEFAULT_MODEL = "gpt-4o-mini"
    return fake_upstream_server


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples `name` with these labels (others may differ) in Prometheus' text
    format: 0 when the metric has none yet, and an AssertionError when the text does not hold
    the metric at all (an error page, a renamed metric), which a 0 would hide."""
    samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name]
    assert samples or f"# TYPE {name.removesuffix('_total').removesuffix('_count')} " in text, (
        f"{name} is not in the exposition"
    )
    return sum(sample.value for sample in samples
               if all(sample.labels.get(key) == wanted for key, wanted in labels.items()))


def wait_for_a_fresh_minute(seconds_needed: float = 10) -> None:
    """Requests-per-minute windows are fixed UTC minutes: start a test early in one."""
    left = 60 - timezone.now().second - timezone.now().microsecond / 1e6
    if left < seconds_needed:
        time.sleep(left + 0.05)
