"""The people of the tests: alice owns keys and sessions; bob is another client app and must see
nothing of alice's. Each persona is a key and an HTTP client (Django's test client) that sends it.

Secrets are watched across the whole suite: after every test that used alice or bob, or a caller's
own upstream key, their keys must appear in no database row, no log record and no response body or
header that the test received (conftest.py's fixtures)."""

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from io import StringIO
from typing import Any

import pytest
from django.apps import apps
from django.core.management import call_command
from rest_framework.test import APIClient

from chat.keys import key_format
from chat.keys.services import api_key_create
from chat.models import ApiKey

UPSTREAM_TEST_KEY = "sk-upstream-test-key-0000"
# A caller's own upstream key (bring your own key), watched like a client key.
BYOK_SENTINEL = "sk-byok-SENTINEL-4f1c9e2b7a6d5c3e8f0a1b2c3d4e5f60"

# Every response the personas' clients received during the current test.
recorded_responses: list[Any] = []


class RecordingClient(APIClient):
    """An APIClient that keeps every response, so that they can be searched for secrets."""

    def request(self, **kwargs: Any) -> Any:
        response = super().request(**kwargs)
        recorded_responses.append(response)
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
        response.content.decode("utf-8", "replace") + repr(sorted(response.items())) for response in recorded_responses
    )
    for secret in secrets:
        assert secret not in stored, "a secret is stored in the database"
        assert secret not in logged, "a secret was logged"
        assert secret not in answered, "a secret was sent back in a response"


def watched_persona(name: str, caplog: pytest.LogCaptureFixture) -> Iterator[Persona]:
    caplog.set_level(logging.DEBUG)
    persona = make_persona(name)
    yield persona
    assert_secrets_absent([persona.raw_key, key_format.parse_key(persona.raw_key).secret], caplog)


def client_for(raw_key: str) -> APIClient:
    """A client that sends `raw_key` (not recorded: for keys the test itself watches)."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def run_command(*args: str) -> list[str]:
    """A management command run in process; the lines it printed."""
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip().splitlines()
