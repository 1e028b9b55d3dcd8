"""/api/v1/sessions: create, list, read, change, delete, and read messages — only your own."""

from chat.models import ChatSession, Message, UsageRecord
from tests.support.fake_upstream import FakeUpstream
from tests.support.personas import Persona

SESSIONS_URL = "/api/v1/sessions"


def test_it_creates_a_session_with_your_own_id_persona_and_memory(alice: Persona) -> None:
    response = alice.client.post(
        SESSIONS_URL,
        {"session_id": "support-42", "title": "Support", "role": "You are kind.", "memory_context": ["VIP"]},
        format="json",
    )

    assert response.status_code == 201
    body = response.json()
    assert {k: body[k] for k in ("session_id", "title", "role", "model", "memory_context", "total_tokens")} == {
        "session_id": "support-42", "title": "Support", "role": "You are kind.", "model": "offline",
        "memory_context": ["VIP"], "total_tokens": 0,
    }
    assert ChatSession.objects.get().api_key == alice.api_key


def test_it_creates_a_session_with_a_server_made_id(alice: Persona) -> None:
    body = alice.client.post(SESSIONS_URL, {}, format="json").json()

    assert len(body["session_id"]) == 32
    assert ChatSession.objects.get().public_id == body["session_id"]


def test_it_refuses_a_duplicate_session_id_with_409(alice: Persona) -> None:
    alice.client.post(SESSIONS_URL, {"session_id": "dup"}, format="json")

    response = alice.client.post(SESSIONS_URL, {"session_id": "dup", "title": "Other"}, format="json")

    assert response.status_code == 409
    assert response.json() == {
        "success": False,
        "error_code": "session_exists",
        "error_message": "A session with this id already exists for your API key.",
        "details": {"session_id": "dup"},
    }
    assert ChatSession.objects.get().title == ""


def test_another_key_may_reuse_an_id(alice: Persona, bob: Persona) -> None:
    alice.client.post(SESSIONS_URL, {"session_id": "same"}, format="json")

    assert bob.client.post(SESSIONS_URL, {"session_id": "same"}, format="json").status_code == 201


def test_it_lists_only_your_sessions_newest_first_a_page_at_a_time(alice: Persona, bob: Persona) -> None:
    for n in range(3):
        alice.client.post(SESSIONS_URL, {"session_id": f"a{n}"}, format="json")
    bob.client.post(SESSIONS_URL, {"session_id": "b0"}, format="json")

    first = alice.client.get(SESSIONS_URL, {"page_size": 2}).json()
    second = alice.client.get(SESSIONS_URL, {"page_size": 2, "page": 2}).json()

    assert first["count"] == 3
    assert [s["session_id"] for s in first["results"]] == ["a2", "a1"]
    assert [s["session_id"] for s in second["results"]] == ["a0"]
    assert [s["session_id"] for s in bob.client.get(SESSIONS_URL).json()["results"]] == ["b0"]


def test_a_page_past_the_end_is_404_in_the_error_shape(alice: Persona) -> None:
    response = alice.client.get(SESSIONS_URL, {"page": 9})

    assert response.status_code == 404
    assert response.json()["error_code"] == "page_not_found"


def test_it_changes_only_the_fields_sent(alice: Persona) -> None:
    alice.client.post(SESSIONS_URL, {"session_id": "s", "title": "Old", "memory_context": ["a"]}, format="json")

    response = alice.client.patch(f"{SESSIONS_URL}/s", {"role": "Be brief.", "memory_context": ["b"]}, format="json")

    assert response.status_code == 200
    session = ChatSession.objects.get()
    assert (session.title, session.system_prompt, session.memory_facts) == ("Old", "Be brief.", ["b"])


def test_it_ignores_fields_a_client_may_not_set(alice: Persona) -> None:
    alice.client.post(SESSIONS_URL, {"session_id": "s"}, format="json")

    alice.client.patch(
        f"{SESSIONS_URL}/s", {"prompt_tokens": 999, "total_tokens": 5, "session_id": "renamed"}, format="json"
    )

    session = ChatSession.objects.get()
    assert (session.public_id, session.prompt_tokens_total) == ("s", 0)


def test_it_lists_messages_oldest_first(alice: Persona, fake_upstream: FakeUpstream) -> None:
    for text in ["one", "two"]:
        alice.client.post("/api/v1/chat", {"session_id": "s", "user_message": text}, format="json")

    body = alice.client.get(f"{SESSIONS_URL}/s/messages").json()

    assert body["count"] == 4
    assert [(m["role"], m["content"], m["status"]) for m in body["results"]] == [
        ("user", "one", "complete"),
        ("assistant", "Hello from the fake upstream.", "complete"),
        ("user", "two", "complete"),
        ("assistant", "Hello from the fake upstream.", "complete"),
    ]


def test_deleting_a_session_removes_its_messages_and_keeps_its_usage(
    alice: Persona, fake_upstream: FakeUpstream
) -> None:
    alice.client.post("/api/v1/chat", {"session_id": "s", "user_message": "hi"}, format="json")

    response = alice.client.delete(f"{SESSIONS_URL}/s")

    assert response.status_code == 204
    assert not ChatSession.objects.exists()
    assert not Message.objects.exists()
    usage = UsageRecord.objects.get()
    assert (usage.session, usage.api_key, usage.total_tokens > 0) == (None, alice.api_key, True)


def test_another_keys_session_is_404_everywhere_and_stays_unchanged(alice: Persona, bob: Persona) -> None:
    alice.client.post(SESSIONS_URL, {"session_id": "private", "title": "Alice's"}, format="json")
    alice.client.post("/api/v1/chat", {"session_id": "private", "user_message": "secret"}, format="json")
    not_found = {
        "success": False,
        "error_code": "session_not_found",
        "error_message": "No session with this id exists for your API key.",
        "details": {},
    }

    responses = [
        bob.client.get(f"{SESSIONS_URL}/private"),
        bob.client.get(f"{SESSIONS_URL}/private/messages"),
        bob.client.patch(f"{SESSIONS_URL}/private", {"title": "Bob's now"}, format="json"),
        bob.client.delete(f"{SESSIONS_URL}/private"),
    ]

    assert [(r.status_code, r.json()) for r in responses] == [(404, not_found)] * 4
    session = ChatSession.objects.get()
    assert (session.title, session.messages.count()) == ("Alice's", 2)
    assert bob.client.get(SESSIONS_URL).json()["results"] == []


def test_an_unknown_address_under_the_api_is_404_in_the_error_shape(alice: Persona) -> None:
    response = alice.client.get("/api/v1/nothing-here")

    assert response.status_code == 404
    assert response.json() == {
        "success": False,
        "error_code": "not_found",
        "error_message": "Nothing exists at this address.",
        "details": {},
    }


def test_a_wrong_method_is_405_in_the_error_shape(alice: Persona) -> None:
    response = alice.client.put(f"{SESSIONS_URL}/s", {}, format="json")

    assert response.status_code == 405
    assert response.json()["error_code"] == "method_not_allowed"


def test_an_unknown_api_address_is_json_even_with_debug_on(alice: Persona, settings) -> None:
    settings.DEBUG = True

    response = alice.client.get("/api/v1/nothing-here")

    assert (response.status_code, response.json()["error_code"]) == (404, "not_found")
