"""Bring your own key: X-Upstream-Api-Key or `api_key`, with and without free_mode."""

from django.core.cache import cache

from chat.models import Message, UsageRecord
from chat.upstreams.choice import verdict_cache_key
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


def test_free_mode_does_not_cache_a_check_that_could_not_decide(alice: Persona, settings) -> None:
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # nothing listens: the check cannot decide
    settings.OPENAI_API_KEY = "sk-anything"

    chat(alice, api_key=WRONG_KEY, free_mode=True)

    assert cache.get(verdict_cache_key(WRONG_KEY, settings.OPENAI_BASE_URL)) is None


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
