"""Bring your own key: X-Upstream-Api-Key or `api_key`, with and without free_mode."""

import time

from django.core.cache import cache

from chat.models import ApiKey, Message, UpstreamCredential, UsageRecord
from chat.upstreams.choice import UNDECIDED, UNDECIDED_VERDICT_SECONDS, verdict_cache_key
from chat.upstreams.services import upstream_credential_save
from tests.support.clock import wait_for_a_fresh_minute
from tests.support.fake_upstream import FakeUpstream
from tests.support.personas import UPSTREAM_TEST_KEY, Persona

CHAT_URL = "/api/v1/chat"
WRONG_KEY = "sk-byok-wrong-0000000000000000000000"


def chat(persona: Persona, headers: dict[str, str] | None = None, **body: object):
    extra = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in (headers or {}).items()}
    return persona.client.post(CHAT_URL, {"session_id": "s", "user_message": "Hi", **body}, format="json", **extra)


def sent_key(fake: FakeUpstream, index: int = -1) -> str:
    return fake.requests[index].headers["authorization"].removeprefix("Bearer ")


def test_the_header_key_is_used_for_this_request_only(alice: Persona, fake_upstream: FakeUpstream, byok_key: str) -> None:
    response = chat(alice, headers={"X-Upstream-Api-Key": byok_key})

    assert response.status_code == 200
    assert response.json()["key_source"] == "user_provided"
    assert sent_key(fake_upstream) == byok_key
    assert UsageRecord.objects.get().key_source == "user_provided"
    chat(alice)
    assert sent_key(fake_upstream) == UPSTREAM_TEST_KEY


def test_the_body_field_of_the_original_clients_works_too(alice: Persona, fake_upstream: FakeUpstream, byok_key: str) -> None:
    response = chat(alice, api_key=byok_key)

    assert response.json()["key_source"] == "user_provided"
    assert sent_key(fake_upstream) == byok_key


def test_two_different_keys_in_header_and_body_are_refused(alice: Persona, fake_upstream: FakeUpstream, byok_key: str) -> None:
    response = chat(alice, headers={"X-Upstream-Api-Key": byok_key}, api_key=WRONG_KEY)

    assert response.status_code == 400
    assert response.json()["details"] == {
        "api_key": ["Send your upstream key in X-Upstream-Api-Key or in api_key, not two different ones."]
    }
    assert fake_upstream.requests == []


def test_a_key_with_spaces_or_control_characters_is_refused(alice: Persona, fake_upstream: FakeUpstream) -> None:
    response = chat(alice, api_key="sk bad\x01key")

    assert response.status_code == 400
    assert response.json()["details"] == {"api_key": ["An upstream API key is printable ASCII without spaces."]}


def test_without_free_mode_a_rejected_key_is_the_callers_error(alice: Persona, fake_upstream: FakeUpstream) -> None:
    response = chat(alice, headers={"X-Upstream-Api-Key": WRONG_KEY})

    assert response.status_code == 502
    assert response.json()["error_code"] == "upstream_auth_failed"
    assert response.json()["error_message"] == (
        "The model provider rejected the upstream API key you sent (X-Upstream-Api-Key or api_key)."
    )
    assert Message.objects.get().status == "failed"
    assert len(fake_upstream.requests) == 1
    assert WRONG_KEY not in response.content.decode()


def test_free_mode_checks_a_valid_key_once_and_uses_it(alice: Persona, fake_upstream: FakeUpstream, byok_key: str) -> None:
    first = chat(alice, api_key=byok_key, free_mode=True)
    second = chat(alice, api_key=byok_key, free_mode=True, user_message="Again")

    assert [r.json()["key_source"] for r in (first, second)] == ["user_provided", "user_provided"]
    assert [(r.method, r.path) for r in fake_upstream.requests] == [
        ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/chat/completions"),
    ]
    assert cache.get(verdict_cache_key(byok_key, fake_upstream.base_url)) is True


def test_free_mode_falls_back_to_the_server_key_when_the_callers_is_rejected(
    alice: Persona, fake_upstream: FakeUpstream
) -> None:
    response = chat(alice, api_key=WRONG_KEY, free_mode=True)

    body = response.json()
    assert response.status_code == 200
    assert body["key_source"] == "default"
    assert body["warnings"] == ["free_mode: your upstream key could not be used, so the server's default key was used."]
    assert sent_key(fake_upstream) == UPSTREAM_TEST_KEY
    assert cache.get(verdict_cache_key(WRONG_KEY, fake_upstream.base_url)) is False
    assert UsageRecord.objects.get().key_source == "default"


def test_free_mode_remembers_a_check_that_could_not_decide_only_briefly(alice: Persona, settings) -> None:
    """Upstream down: each free_mode request used to check the key again (a call every time); the
    undecided verdict is now kept for UNDECIDED_VERDICT_SECONDS, and means the server's key."""
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # nothing listens: the check cannot decide
    settings.OPENAI_API_KEY = "sk-anything"
    cache_key = verdict_cache_key(WRONG_KEY, settings.OPENAI_BASE_URL)

    chat(alice, api_key=WRONG_KEY, free_mode=True)

    assert cache.get(cache_key) == UNDECIDED
    assert 0 < cache._expire_info[cache.make_and_validate_key(cache_key)] - time.time() <= UNDECIDED_VERDICT_SECONDS


def test_the_verdict_cache_never_holds_the_key(alice: Persona, fake_upstream: FakeUpstream, byok_key: str) -> None:
    chat(alice, api_key=byok_key, free_mode=True)

    stored = repr([(key, value) for key, value in cache._cache.items()])  # LocMemCache's own store
    assert "byok-verdict:" in stored
    assert byok_key not in stored and byok_key.encode() not in b"".join(cache._cache.values())


def test_a_free_mode_verdict_holds_only_for_the_upstream_it_was_checked_against(
    alice: Persona, fake_upstream: FakeUpstream, byok_key: str
) -> None:
    chat(alice, api_key=byok_key, free_mode=True)

    assert cache.get(verdict_cache_key(byok_key, fake_upstream.base_url)) is True
    assert cache.get(verdict_cache_key(byok_key, "http://127.0.0.1:8000/v1")) is None


def test_free_mode_checks_a_callers_key_only_once_the_request_is_admitted(
    alice: Persona, fake_upstream: FakeUpstream
) -> None:
    """A key limited to one request a minute, sending twenty with keys of its own choosing: the
    refused ones cost upstream nothing (each used to cost a GET /models with the caller's key)."""
    wait_for_a_fresh_minute()
    ApiKey.objects.filter(pk=alice.api_key.pk).update(requests_per_minute=1)

    statuses = [
        chat(alice, api_key=f"{WRONG_KEY}{n:02d}", free_mode=True, session_id=f"s{n}").status_code for n in range(20)
    ]

    assert (statuses.count(200), statuses.count(429)) == (1, 19)
    assert [(r.method, r.path) for r in fake_upstream.requests] == [("GET", "/v1/models"), ("POST", "/v1/chat/completions")]


def test_free_mode_checks_a_callers_key_only_after_the_request_is_validated(
    alice: Persona, fake_upstream: FakeUpstream
) -> None:
    # Valid for the serializer, refused by the turn's first step: more than gpt-4o-mini writes.
    response = chat(alice, api_key=WRONG_KEY, free_mode=True, model="gpt-4o-mini", max_tokens=500_000)

    assert (response.status_code, response.json()["error_code"]) == (400, "max_tokens_too_large")
    assert fake_upstream.requests == []


def test_free_mode_falling_back_on_the_servers_key_holds_the_key_to_its_credentials_models(
    alice: Persona, fake_upstream: FakeUpstream
) -> None:
    """The caller's key may ask for any model; once free_mode falls back on the key's upstream
    credential, that credential's model list applies, before any chat is sent."""
    credential = upstream_credential_save(
        credential=UpstreamCredential(name="team", base_url=fake_upstream.base_url, served_models=["gpt-4o-mini"]),
        plaintext_key=UPSTREAM_TEST_KEY,
    )
    ApiKey.objects.filter(pk=alice.api_key.pk).update(upstream_credential=credential)
    alice.api_key.refresh_from_db()

    response = chat(alice, api_key=WRONG_KEY, free_mode=True, model="gpt-4o")

    assert (response.status_code, response.json()["error_code"]) == (400, "model_not_available")
    assert [(r.method, r.path) for r in fake_upstream.requests] == [("GET", "/v1/models")]
    assert list(Message.objects.values_list("status", "error_code")) == [("failed", "model_not_available")]
    assert UsageRecord.objects.count() == 0
