"""Shared fixtures (the people and helpers they use are in tests/support/).

Upstream is never mocked: `fake_upstream` is a real OpenAI-compatible HTTP server on 127.0.0.1
that the server's own `openai` SDK client talks to.
"""

import logging
from collections.abc import Iterator

import pytest
from django.core.cache import cache
from django.utils import translation

from tests.support.fake_upstream import FakeUpstream
from tests.support.personas import (
    BYOK_SENTINEL,
    UPSTREAM_TEST_KEY,
    Persona,
    assert_secrets_absent,
    recorded_responses,
    watched_persona,
)

# The module-scoped real-server fixtures (serve, offline_server, upstream_server).
pytest_plugins = ["tests.support.served"]


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
    """Each test starts with no recorded responses, an empty cache and the default language (a
    request with `Accept-Language: ko` leaves Korean active in its thread after it ends)."""
    recorded_responses.clear()
    cache.clear()
    translation.deactivate()


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
    # Tests change the fake upstream's model list: ask it every time.
    settings.LLM_MODEL_LIST_SECONDS = 0
    return fake_upstream_server
