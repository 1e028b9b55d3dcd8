"""POST /api/v1/chat against a real fake upstream over HTTP."""

from datetime import timedelta

import pytest
from django.utils import timezone

from chat.models import ChatSession, Message, UsageRecord
from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.personas import Persona

CHAT_URL = "/api/v1/chat"


def chat(persona: Persona, **body: object):
    return persona.client.post(CHAT_URL, body, format="json")


def test_the_original_integration_test_passes(alice: Persona, fake_upstream: FakeUpstream) -> None:
    response = chat(alice, user_message="Hello", session_id="test-session")

    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["response_text"] == "Hello from the fake upstream."
    assert body["error_message"] is None
    assert body["session_id"] == "test-session"


def test_it_returns_the_whole_response_contract(alice: Persona, fake_upstream: FakeUpstream) -> None:
    fake_upstream.enqueue(Behaviour(reply="Four.", usage=(21, 2)))

    body = chat(alice, user_message="What is 2+2?").json()

    assert set(body) == {
        "success", "session_id", "message_id", "user_message_id", "response_text", "model", "prompt_tokens",
        "completion_tokens", "total_tokens_used", "response_time", "key_source", "finish_reason", "tool_calls", "warnings",
        "error_message",
    }
    assert (body["prompt_tokens"], body["completion_tokens"], body["total_tokens_used"]) == (21, 2, 23)
    assert body["model"] == "gpt-4o-mini"
    assert body["key_source"] == "default"
    assert body["warnings"] == []
    assert body["finish_reason"] == "stop"
    assert 0 <= body["response_time"] < 5
    # A new session was created, with a server-made id, and both messages are stored.
    session = ChatSession.objects.get(public_id=body["session_id"], api_key=alice.api_key)
    assert list(session.messages.order_by("id").values_list("id", "role", "content", "status")) == [
        (body["user_message_id"], "user", "What is 2+2?", "complete"),
        (body["message_id"], "assistant", "Four.", "complete"),
    ]


def test_it_builds_the_third_turn_from_stored_history(alice: Persona, fake_upstream: FakeUpstream) -> None:
    fake_upstream.enqueue(Behaviour(reply="Hi Alice."), Behaviour(reply="Paris."), Behaviour(reply="About 2 million."))

    for message in ["I am Alice.", "What is the capital of France?", "How many people live there?"]:
        assert chat(alice, session_id="trip", user_message=message).status_code == 200

    third = fake_upstream.requests[2].json
    assert third["messages"] == [
        {"role": "user", "content": "I am Alice."},
        {"role": "assistant", "content": "Hi Alice."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "How many people live there?"},
    ]
    assert third["max_tokens"] == 1000
    assert third["temperature"] == 0.7


def test_it_sends_persona_then_memory_then_history_then_the_new_message(
    alice: Persona, fake_upstream: FakeUpstream
) -> None:
    chat(alice, session_id="s1", user_message="First.", role="You are terse.", memory_context=["Likes tea"])
    chat(alice, session_id="s1", user_message="Second.", memory_context=["Lives in Seoul", "Likes tea"])

    assert fake_upstream.requests[1].json["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "system", "content": "Memory:\nLikes tea\nLives in Seoul"},
        {"role": "user", "content": "First."},
        {"role": "assistant", "content": "Hello from the fake upstream."},
        {"role": "user", "content": "Second."},
    ]
    session = ChatSession.objects.get(public_id="s1")
    assert session.system_prompt == "You are terse."
    assert session.memory_facts == ["Likes tea", "Lives in Seoul"]


def test_it_trims_history_to_the_context_budget_without_splitting_messages(
    alice: Persona, fake_upstream: FakeUpstream, settings
) -> None:
    # Every history message below costs 3 + 1 (role) + 10 (content) = 14 tokens in o200k_base.
    history = [f"{'user' if i % 2 == 0 else 'assistant'}:{'word ' * 9}w{i:02d}" for i in range(20)]
    settings.LLM_CONTEXT_WINDOWS = {"tiny-model": 200}

    response = chat(
        alice, session_id="long", model="tiny-model", max_tokens=100, user_message="Sum up.",
        conversation_history=history,
    )

    assert response.status_code == 200
    sent = fake_upstream.requests[0].json["messages"]
    # Budget 200 - 100 = 100: reply priming 3 + new message (3 + 1 + 3) = 10, leaving room for
    # 6 whole history messages (84 tokens); the seventh would overflow.
    assert [m["content"][-3:] for m in sent[:-1]] == ["w14", "w15", "w16", "w17", "w18", "w19"]
    assert sent[-1] == {"role": "user", "content": "Sum up."}
    assert all(len(m["content"].split()) == 10 for m in sent[:-1])


def test_it_refuses_a_message_that_alone_does_not_fit(alice: Persona, fake_upstream: FakeUpstream, settings) -> None:
    settings.LLM_CONTEXT_WINDOWS = {"tiny-model": 50}
    # "word " * 20 is 21 tokens (the trailing space is one); with 3 + 1 for the message and 3 for
    # the reply priming it needs 28, and only 50 - 40 = 10 are left.

    response = chat(alice, session_id="s", model="tiny-model", max_tokens=40, user_message="word " * 20)

    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "error_code": "context_too_long",
        "error_message": (
            "The message does not fit in the context window: the persona, memory and new message need "
            "28 tokens, but tiny-model has 50 tokens of which max_tokens=40 are kept for the answer. "
            "Shorten the message or lower max_tokens."
        ),
        "details": {"needed_tokens": 28, "context_window": 50, "max_tokens": 40},
    }
    assert fake_upstream.requests == []
    assert not ChatSession.objects.exists()
    assert not Message.objects.exists()


def test_it_rejects_a_blank_message_with_the_original_sentence(alice: Persona, fake_upstream: FakeUpstream) -> None:
    response = chat(alice, session_id="s", user_message="   \n ")

    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "error_code": "validation_error",
        "error_message": "The request is invalid; 'details' says what is wrong with each field.",
        "details": {"user_message": ["user message cannot be empty"]},
    }
    assert fake_upstream.requests == []
    assert not Message.objects.exists()


def test_it_rejects_wrong_field_types_field_by_field(alice: Persona, fake_upstream: FakeUpstream) -> None:
    response = chat(
        alice, user_message=123, session_id=5, max_tokens="100", temperature=True,
        memory_context="not a list", conversation_history=["no role separator"],
    )

    assert response.status_code == 400
    assert response.json()["details"] == {
        "user_message": ["Must be a string."],
        "session_id": ["Must be a string."],
        "max_tokens": ["Must be an integer."],
        "temperature": ["Must be a number."],
        "memory_context": ['Expected a list of items but got type "str".'],
        "conversation_history": ["Entry 0 is not 'role:content' with role user, assistant or system."],
    }
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"temperature": 2.5}, "temperature", "Ensure this value is less than or equal to 2.0."),
        ({"max_tokens": 0}, "max_tokens", "Ensure this value is greater than or equal to 1."),
        ({"session_id": "has spaces"}, "session_id",
         "A session id is 1 to 128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit."),
        ({}, "user_message", "user_message is required."),
    ],
)
def test_it_rejects_out_of_range_values(alice: Persona, body: dict, field: str, message: str) -> None:
    response = chat(alice, **({"user_message": "hi"} | body) if body else {})

    assert response.status_code == 400
    assert response.json()["details"][field] == [message]


def test_it_rejects_malformed_json(alice: Persona) -> None:
    response = alice.client.post(CHAT_URL, data=b'{"user_message": ', content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error_code"] == "malformed_request"


def test_it_refuses_a_body_over_the_size_limit_with_413(alice: Persona, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000

    response = chat(alice, user_message="x" * 2000)

    assert response.status_code == 413
    assert response.json() == {
        "success": False,
        "error_code": "request_too_large",
        "error_message": "The request body is too large.",
        "details": {},
    }


@pytest.mark.parametrize(
    ("behaviour", "status", "error_code", "error_message"),
    [
        (
            Behaviour(status=401), 502, "upstream_auth_failed",
            "The model provider rejected the server's API key; the operator has to check OPENAI_API_KEY.",
        ),
        (
            Behaviour(status=429, headers={"retry-after": "7"}), 429, "upstream_rate_limited",
            "The model provider is rate limiting this server; try again later.",
        ),
        (
            Behaviour(status=500), 502, "upstream_error",
            "The model provider returned an error; the message was kept and can be retried.",
        ),
        (
            Behaviour(status=404), 404, "upstream_rejected_request",
            "The model provider rejected the request (for example an unknown model or an invalid parameter).",
        ),
        (
            Behaviour(malformed=True), 502, "upstream_bad_response",
            "The model provider sent a response that could not be read.",
        ),
        (
            Behaviour(hang=True), 504, "upstream_timeout",
            "The model provider did not answer in time; try again later.",
        ),
    ],
)
def test_an_upstream_failure_is_mapped_and_keeps_the_user_message_as_failed(
    alice: Persona, fake_upstream: FakeUpstream, settings, behaviour: Behaviour, status: int, error_code: str,
    error_message: str,
) -> None:
    settings.LLM_TIMEOUT_SECONDS = 0.5
    fake_upstream.enqueue(behaviour)

    response = chat(alice, session_id="s", user_message="Hello?")

    assert response.status_code == status
    body = response.json()
    user_message = Message.objects.get()
    assert body["error_code"] == error_code
    assert body["error_message"] == error_message
    assert body["details"]["session_id"] == "s"
    assert body["details"]["user_message_id"] == user_message.pk
    assert (user_message.role, user_message.content, user_message.status) == ("user", "Hello?", "failed")
    assert user_message.error_code == error_code
    usage = UsageRecord.objects.get()
    assert (usage.outcome, usage.error_code, usage.total_tokens) == ("failed", error_code, 0)
    assert ChatSession.objects.get().turn_started_at is None
    if status == 429:
        assert response["Retry-After"] == "7"


def test_an_unreachable_upstream_gives_503(alice: Persona, settings) -> None:
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    settings.OPENAI_API_KEY = "sk-anything"

    response = chat(alice, session_id="s", user_message="Hello?")

    assert response.status_code == 503
    assert response.json()["error_code"] == "upstream_unavailable"
    assert Message.objects.get().status == "failed"


def test_a_failed_turn_is_not_replayed(alice: Persona, fake_upstream: FakeUpstream) -> None:
    fake_upstream.enqueue(Behaviour(status=500))
    chat(alice, session_id="s", user_message="Lost question")

    assert chat(alice, session_id="s", user_message="Next question").status_code == 200

    assert fake_upstream.requests[1].json["messages"] == [{"role": "user", "content": "Next question"}]


def test_it_counts_tokens_itself_when_upstream_reports_no_usage(alice: Persona, fake_upstream: FakeUpstream) -> None:
    fake_upstream.enqueue(Behaviour(reply="Hello there", usage=None))

    body = chat(alice, session_id="s", user_message="Hi").json()

    # o200k_base: 3 (message) + 1 ("user") + 1 ("Hi") + 3 (reply priming) = 8; "Hello there" = 2.
    assert (body["prompt_tokens"], body["completion_tokens"]) == (8, 2)
    assert UsageRecord.objects.get().usage_estimated is True


def test_it_records_usage_and_session_totals(alice: Persona, fake_upstream: FakeUpstream) -> None:
    fake_upstream.enqueue(Behaviour(usage=(10, 5)), Behaviour(usage=(30, 7)))

    chat(alice, session_id="s", user_message="one")
    chat(alice, session_id="s", user_message="two")

    session = ChatSession.objects.get()
    assert (session.prompt_tokens_total, session.completion_tokens_total) == (40, 12)
    records = list(UsageRecord.objects.order_by("id").values_list(
        "api_key", "session", "model", "prompt_tokens", "completion_tokens", "total_tokens", "key_source", "outcome",
    ))
    assert records == [
        (alice.api_key.pk, session.pk, "gpt-4o-mini", 10, 5, 15, "default", "success"),
        (alice.api_key.pk, session.pk, "gpt-4o-mini", 30, 7, 37, "default", "success"),
    ]
    answers = Message.objects.filter(role="assistant").order_by("id")
    assert [(m.prompt_tokens, m.completion_tokens, m.model) for m in answers] == [
        (10, 5, "gpt-4o-mini"), (30, 7, "gpt-4o-mini"),
    ]
    assert all(m.latency_ms is not None and m.latency_ms >= 0 for m in answers)


def test_it_imports_history_only_into_an_empty_session(alice: Persona, fake_upstream: FakeUpstream) -> None:
    chat(alice, session_id="s", user_message="Go on.", conversation_history=["user:Hi", "assistant: Hello!"])
    second = chat(alice, session_id="s", user_message="And?", conversation_history=["user:Forged"])

    assert fake_upstream.requests[0].json["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Go on."},
    ]
    assert second.json()["warnings"] == [
        "conversation_history was ignored: this session already has stored messages, and its stored history is used instead."
    ]
    assert "Forged" not in str(fake_upstream.requests[1].json)
    assert Message.objects.filter(content="Forged").count() == 0


def test_a_second_turn_while_one_is_in_flight_gets_409(alice: Persona, fake_upstream: FakeUpstream) -> None:
    chat(alice, session_id="s", user_message="First.")
    ChatSession.objects.filter(public_id="s").update(turn_started_at=timezone.now(), turn_heartbeat_at=timezone.now())

    response = chat(alice, session_id="s", user_message="Second.")

    assert response.status_code == 409
    assert response.json()["error_code"] == "session_busy"
    assert response["Retry-After"] == "1"
    assert Message.objects.filter(content="Second.").count() == 0
    assert len(fake_upstream.requests) == 1


def test_a_lease_left_by_a_crashed_worker_is_free_once_it_is_no_longer_renewed(
    alice: Persona, fake_upstream: FakeUpstream, settings
) -> None:
    """A turn renews its lease every third of CHAT_TURN_LEASE_SECONDS while it runs; a lease not
    renewed for that long is its dead holder's, however recently the turn started."""
    settings.CHAT_TURN_LEASE_SECONDS = 20
    chat(alice, session_id="s", user_message="First.")
    now = timezone.now()
    ChatSession.objects.filter(public_id="s").update(turn_started_at=now, turn_heartbeat_at=now - timedelta(seconds=19))
    assert chat(alice, session_id="s", user_message="Second.").status_code == 409

    ChatSession.objects.filter(public_id="s").update(turn_started_at=now, turn_heartbeat_at=now - timedelta(seconds=21))
    assert chat(alice, session_id="s", user_message="Third.").status_code == 200


def test_two_keys_using_the_same_session_id_never_see_each_other(
    alice: Persona, bob: Persona, fake_upstream: FakeUpstream
) -> None:
    chat(alice, session_id="shared-name", user_message="Alice's secret plan")
    response = chat(bob, session_id="shared-name", user_message="Bob here")

    assert response.status_code == 200
    assert fake_upstream.requests[1].json["messages"] == [{"role": "user", "content": "Bob here"}]
    assert ChatSession.objects.filter(public_id="shared-name").count() == 2


def test_the_offline_provider_answers_when_no_upstream_is_configured(alice: Persona) -> None:
    response = chat(alice, session_id="s", user_message="Hello offline")

    body = response.json()
    assert response.status_code == 200
    assert body["model"] == "offline"
    assert body["response_text"].startswith("[offline] No upstream model is configured")
    assert 'your last message was: "Hello offline"' in body["response_text"]
    assert body["prompt_tokens"] == 3 + 1 + 2 + 3
    assert body["completion_tokens"] > 0


def test_it_needs_a_key(db: None, client) -> None:
    response = client.post(CHAT_URL, {"user_message": "hi"}, content_type="application/json")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert response.json() == {
        "success": False,
        "error_code": "authentication_required",
        "error_message": "An API key is required: send it as 'Authorization: Bearer <key>'.",
        "details": {},
    }


def test_errors_are_translated_into_korean(alice: Persona) -> None:
    response = alice.client.post(CHAT_URL, {"user_message": " "}, format="json", HTTP_ACCEPT_LANGUAGE="ko")

    assert response.status_code == 400
    assert response.json()["error_message"] == "요청이 올바르지 않습니다. 각 필드의 문제는 'details'를 보세요."
    assert response.json()["details"] == {"user_message": ["사용자 메시지는 비어 있을 수 없습니다"]}


def test_the_context_error_is_translated_with_its_numbers(alice: Persona, settings) -> None:
    settings.LLM_CONTEXT_WINDOWS = {"tiny-model": 50}

    response = alice.client.post(
        CHAT_URL, {"user_message": "word " * 20, "model": "tiny-model", "max_tokens": 40}, format="json",
        HTTP_ACCEPT_LANGUAGE="ko",
    )

    assert response.json()["error_message"] == (
        "메시지가 컨텍스트 창에 들어가지 않습니다: 페르소나, 메모리, 새 메시지에 28 토큰이 필요하지만 tiny-model의 "
        "컨텍스트 창은 50 토큰이고 그중 max_tokens=40 토큰은 답변용으로 남겨 둡니다. 메시지를 줄이거나 max_tokens를 낮추세요."
    )


def completion_body(**changes: object) -> dict:
    body = {
        "id": "x", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Fine."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
    return body | changes


@pytest.mark.parametrize(
    "body",
    [
        completion_body(choices=[{"message": {"role": "assistant", "content": ["a list"]}}]),
        completion_body(choices=[]),
        completion_body(choices="nothing"),
        {"unrelated": True},
    ],
)
def test_an_answer_of_the_wrong_shape_is_a_bad_response_not_a_crash(
    alice: Persona, fake_upstream: FakeUpstream, body: dict
) -> None:
    fake_upstream.enqueue(Behaviour(body=body))

    response = chat(alice, session_id="s", user_message="Hi")

    assert (response.status_code, response.json()["error_code"]) == (502, "upstream_bad_response")
    assert Message.objects.get().status == "failed"


def test_odd_model_names_and_usage_from_upstream_are_not_trusted(alice: Persona, fake_upstream: FakeUpstream) -> None:
    fake_upstream.enqueue(
        Behaviour(body=completion_body(model={"a": 1}, usage={"prompt_tokens": -5, "completion_tokens": "7"})),
        Behaviour(body=completion_body(model="m" * 500)),
    )

    first = chat(alice, session_id="s", user_message="Hi").json()
    second = chat(alice, session_id="s", user_message="Again").json()

    assert first["model"] == "gpt-4o-mini"
    assert first["prompt_tokens"] > 0 and first["completion_tokens"] == 2  # our own count of "Fine."
    assert UsageRecord.objects.order_by("id").first().usage_estimated is True
    assert second["model"] == "m" * 200


def test_a_client_accepting_event_streams_that_asks_for_one_answer_gets_json(alice: Persona) -> None:
    response = alice.client.post(CHAT_URL, {"user_message": "Hi"}, format="json", HTTP_ACCEPT="text/event-stream")

    assert (response.status_code, response["Content-Type"]) == (200, "application/json")
    assert response.json()["success"] is True
