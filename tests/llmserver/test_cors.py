"""CORS: browser apps may call the two bearer-key APIs (/api/, /v1/) from any origin, or only from
those in CORS_ALLOWED_ORIGINS, and never with credentials; the admin answers no other origin."""

import subprocess
import sys
from typing import Any

import pytest
from django.test import Client

from tests.support.personas import Persona
from tests.support.processes import PROJECT_DIR, child_environment

APP_ORIGIN = "https://app.example.com"
# What the openai SDK (Python or JavaScript, in a browser) asks to send, besides the key and JSON.
SDK_HEADERS = "authorization, content-type, x-session-id, idempotency-key, x-stainless-os, x-stainless-retry-count"


def preflight(path: str, origin: str = "https://anywhere.example") -> Any:
    return Client().options(
        path, HTTP_ORIGIN=origin, HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS=SDK_HEADERS,
    )


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/v1/chat"])
def test_a_preflight_from_any_origin_is_answered_without_credentials(path: str) -> None:
    response = preflight(path)

    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response
    assert "POST" in response["Access-Control-Allow-Methods"]
    allowed = {name.strip() for name in response["Access-Control-Allow-Headers"].split(",")}
    assert {name.strip() for name in SDK_HEADERS.split(",")} | {"x-upstream-api-key"} <= allowed


def test_a_page_may_read_the_headers_a_client_needs(alice: Persona) -> None:
    response = alice.client.post(
        "/v1/chat/completions", {"model": "offline", "messages": [{"role": "user", "content": "Hi"}]},
        format="json", HTTP_ORIGIN=APP_ORIGIN, HTTP_X_SESSION_ID="from-a-browser",
    )

    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response
    assert response["Access-Control-Expose-Headers"] == (
        "X-Request-Id, X-Session-Id, X-Message-Id, Retry-After, Idempotent-Replayed"
    )


def test_narrowed_to_listed_origins_only_those_are_answered(settings: Any) -> None:
    settings.CORS_ALLOWED_ORIGINS = [APP_ORIGIN]
    settings.CORS_ALLOW_ALL_ORIGINS = False

    unlisted = preflight("/v1/chat/completions", origin="https://evil.example")
    listed = preflight("/v1/chat/completions", origin=APP_ORIGIN)

    assert "Access-Control-Allow-Origin" not in unlisted
    assert listed["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "Access-Control-Allow-Credentials" not in listed


@pytest.mark.parametrize("path", ["/admin/", "/admin/login/", "/admin/playground/chat"])
def test_the_admin_answers_no_other_origin(path: str) -> None:
    asked = preflight(path)
    visited = Client().get(path, HTTP_ORIGIN="https://anywhere.example")

    assert not [name for name in asked.headers if name.lower().startswith("access-control-")]
    assert not [name for name in visited.headers if name.lower().startswith("access-control-")]


def settings_with(**env: str) -> subprocess.CompletedProcess:
    """The CORS settings a fresh interpreter reads from this environment."""
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.CORS_ALLOWED_ORIGINS, settings.CORS_ALLOW_ALL_ORIGINS, settings.CORS_ALLOW_CREDENTIALS)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60,
        env=child_environment(DJANGO_SETTINGS_MODULE="llmserver.settings", LOG_FILE="", **env),
    )


def test_cors_allowed_origins_is_read_from_the_environment_as_a_comma_separated_list() -> None:
    default = settings_with()
    narrowed = settings_with(CORS_ALLOWED_ORIGINS=f"{APP_ORIGIN},http://localhost:3000")

    assert default.stdout.strip() == "[] True False", default.stderr
    assert narrowed.stdout.strip() == f"['{APP_ORIGIN}', 'http://localhost:3000'] False False", narrowed.stderr


def test_an_entry_that_is_not_an_origin_stops_start_up_saying_what_to_set() -> None:
    result = settings_with(CORS_ALLOWED_ORIGINS=f"{APP_ORIGIN}/chat")

    assert result.returncode != 0
    assert (
        "CORS_ALLOWED_ORIGINS holds 'https://app.example.com/chat', which is not an origin: give each as "
        "scheme://host[:port], for example https://app.example.com, with no path."
    ) in result.stderr
