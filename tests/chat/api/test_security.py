"""What must never happen: secrets leaking, and clients setting what only the server sets."""

import logging

import pytest

from chat.models import ApiKey, ChatSession
from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.personas import Persona, assert_secrets_absent


def test_the_leak_watch_catches_a_logged_secret(db: None, caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger("chat").warning("oops: %s", "sk-planted-secret")

    with pytest.raises(AssertionError, match="a secret was logged"):
        assert_secrets_absent(["sk-planted-secret"], caplog)


def test_the_leak_watch_catches_a_stored_secret(alice: Persona, caplog: pytest.LogCaptureFixture) -> None:
    ChatSession.objects.create(api_key=alice.api_key, public_id="x", title="sk-planted-secret", model="m")

    with pytest.raises(AssertionError, match="a secret is stored in the database"):
        assert_secrets_absent(["sk-planted-secret"], caplog)


def test_fields_only_the_server_sets_are_ignored_in_a_chat(alice: Persona, fake_upstream: FakeUpstream) -> None:
    fake_upstream.enqueue(Behaviour(usage=(10, 2)))

    response = alice.client.post("/api/v1/chat", {
        "user_message": "Hi", "session_id": "s", "prompt_tokens": 999_999, "total_tokens_used": 1,
        "key_source": "user_provided", "scopes": ["admin"], "key_id": "takeover", "owner": 1,
        "message_id": 42, "success": False,
    }, format="json")

    assert response.status_code == 200
    assert (response.json()["total_tokens_used"], response.json()["key_source"]) == (12, "default")
    session = ChatSession.objects.get()
    assert (session.prompt_tokens_total, session.completion_tokens_total) == (10, 2)
    api_key = ApiKey.objects.get()
    assert (api_key.scopes, api_key.key_id, api_key.owner) == (["chat"], alice.api_key.key_id, None)


def test_another_keys_messages_are_never_listed_or_replayed(
    alice: Persona, bob: Persona, fake_upstream: FakeUpstream
) -> None:
    alice.client.post("/api/v1/chat", {"session_id": "a", "user_message": "Alice only"}, format="json")
    alice_message_ids = {m["message_id"] for m in alice.client.get("/api/v1/sessions/a/messages").json()["results"]}

    bob.client.post("/api/v1/chat", {"session_id": "a", "user_message": "Bob here"}, format="json")
    bob_listing = bob.client.get("/api/v1/sessions/a/messages").json()["results"]

    assert not {m["message_id"] for m in bob_listing} & alice_message_ids
    assert "Alice only" not in str(fake_upstream.requests[1].json)
    assert [m["content"] for m in alice.client.get("/api/v1/sessions/a/messages").json()["results"]] == [
        "Alice only", "Hello from the fake upstream.",
    ]


def test_a_sessions_usage_is_listed_for_its_key_and_is_404_for_any_other(
    alice: Persona, bob: Persona, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.enqueue(Behaviour(usage=(10, 2)), Behaviour(status=500))
    alice.client.post("/api/v1/chat", {"session_id": "a", "user_message": "one"}, format="json")
    alice.client.post("/api/v1/chat", {"session_id": "a", "user_message": "two"}, format="json")

    mine = alice.client.get("/api/v1/sessions/a/usage")
    theirs = bob.client.get("/api/v1/sessions/a/usage")

    assert [(u["outcome"], u["total_tokens"], u["key_source"]) for u in mine.json()["results"]] == [
        ("success", 12, "default"), ("failed", 0, "default"),
    ]
    assert (theirs.status_code, theirs.json()["error_code"]) == (404, "session_not_found")
