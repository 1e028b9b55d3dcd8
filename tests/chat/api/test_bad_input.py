"""Bad input anywhere in a request gets a 4xx in the one error shape, never a 500, and stores nothing.

PostgreSQL refuses NUL in text and no database can store half a surrogate pair, so before these
checks a NUL in a message was a 500 on PostgreSQL (the suite runs on both databases).
"""

import json

import pytest

from chat.models import ChatSession, Message, UsageRecord
from tests.support.personas import Persona

NUL = "\x00"
LONE_SURROGATE = "\ud800"


def post_json(persona: Persona, path: str, body: dict, **headers: str):
    # json.dumps escapes both as \u0000 and \ud800, which is how they arrive in real JSON.
    return persona.client.post(path, data=json.dumps(body), content_type="application/json", **headers)


def assert_refused(response, status: int, error_code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["success"] is False and body["error_code"] == error_code, body
    return body


def assert_nothing_stored() -> None:
    assert (ChatSession.objects.count(), Message.objects.count(), UsageRecord.objects.count()) == (0, 0, 0)


@pytest.mark.parametrize("bad", [NUL, LONE_SURROGATE], ids=["nul", "lone_surrogate"])
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/chat", {"user_message": "Hi {bad}"}, "user_message"),
        ("/api/v1/chat", {"user_message": "Hi", "role": "A {bad} pirate"}, "role"),
        ("/api/v1/chat", {"user_message": "Hi", "memory_context": ["ok", "fact {bad}"]}, "memory_context[1]"),
        ("/api/v1/chat", {"user_message": "Hi", "conversation_history": ["user:{bad}"]}, "conversation_history[0]"),
        ("/api/v1/chat", {"user_message": "Hi", "model": "gpt{bad}"}, "model"),
        ("/api/v1/chat", {"user_message": "Hi", "key{bad}": 1}, "$"),
        ("/api/v1/sessions", {"title": "T{bad}"}, "title"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi {bad}"}]}, "messages[0].content"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "{bad}"}]}]},
            "messages[0].content[0].text",
        ),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "user": "u{bad}"}, "user"),
    ],
)
def test_unstorable_text_in_any_body_field_is_a_400_naming_the_field(
    alice: Persona, path: str, body: dict, field: str, bad: str
) -> None:
    body = json.loads(json.dumps(body).replace("{bad}", json.dumps(bad)[1:-1]))

    response = post_json(alice, path, body)

    assert response.status_code == 400, response.content
    error = response.json()
    if path.startswith("/v1/"):
        assert (error["error"]["code"], error["error"]["details"]) == ("invalid_text", {"field": field})
    else:
        assert (error["error_code"], error["details"]) == ("invalid_text", {"field": field})
    assert_nothing_stored()


@pytest.mark.parametrize("bad", [NUL, LONE_SURROGATE], ids=["nul", "lone_surrogate"])
def test_unstorable_text_cannot_overwrite_a_stored_session(alice: Persona, bad: str) -> None:
    post_json(alice, "/api/v1/sessions", {"session_id": "s", "title": "Kept", "memory_context": ["kept"]})

    response = alice.client.patch(
        "/api/v1/sessions/s", data=json.dumps({"title": f"x{bad}", "memory_context": [bad]}),
        content_type="application/json",
    )

    assert_refused(response, 400, "invalid_text")
    session = ChatSession.objects.get()
    assert (session.title, session.memory_facts) == ("Kept", ["kept"])


def test_bytes_that_are_not_utf8_are_a_malformed_request(alice: Persona) -> None:
    response = alice.client.post("/api/v1/chat", data=b'{"user_message": "\xff\xfe"}', content_type="application/json")

    assert_refused(response, 400, "malformed_request")
    assert_nothing_stored()


@pytest.mark.parametrize(
    "path",
    ["/api/v1/sessions/a%00b", "/api/v1/sessions/a%00b/messages", "/api/v1/sessions/%ED%A0%80/usage",
     "/api/v1/sessions/" + "x" * 129],
)
def test_a_session_address_no_id_can_have_is_a_404_without_a_query(
    alice: Persona, path: str, django_assert_num_queries
) -> None:
    # No view matches, so nothing is looked up: not the key, not a session.
    with django_assert_num_queries(0):
        assert_refused(alice.client.get(path), 404, "not_found")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("key=%00", "key"),
        ("group_by=%00", "group_by"),
        ("from=2026-01-01%00", "from"),
    ],
)
def test_nul_in_a_query_parameter_is_a_400(alice: Persona, query: str, field: str) -> None:
    body = assert_refused(alice.client.get(f"/api/v1/usage?{query}"), 400, "validation_error")
    assert field in body["details"]


def test_nul_in_the_session_header_is_a_400(alice: Persona) -> None:
    response = post_json(
        alice, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}, HTTP_X_SESSION_ID="s\x00"
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert_nothing_stored()


@pytest.mark.parametrize(
    ("query", "parameter"),
    [("page_size=101", "page_size"), ("page_size=0", "page_size"), ("page_size=ten", "page_size"),
     ("page_size=%00", "page_size"), ("page_size=%EF%BC%95", "page_size"), ("page_size=" + "9" * 4301, "page_size"),
     ("page=0", "page"), ("page=x", "page"), ("page=" + "9" * 4301, "page")],
)
def test_a_page_size_or_page_out_of_bounds_is_a_400_not_quietly_changed(
    alice: Persona, query: str, parameter: str
) -> None:
    body = assert_refused(alice.client.get(f"/api/v1/sessions?{query}"), 400, "validation_error")
    assert list(body["details"]) == [parameter]


def test_the_largest_page_size_is_served(alice: Persona) -> None:
    for number in range(3):
        post_json(alice, "/api/v1/sessions", {"session_id": f"s{number}"})

    response = alice.client.get("/api/v1/sessions?page_size=100&page=1")

    assert response.status_code == 200
    assert response.json()["count"] == 3


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/chat", {"user_message": "Hi", "model": "gpt-4o-mini", "max_tokens": 16_385}),
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}],
                                  "max_tokens": 16_385}),
    ],
)
def test_max_tokens_over_the_models_ceiling_is_refused_before_anything_is_stored(
    alice: Persona, fake_upstream, path: str, body: dict
) -> None:
    response = post_json(alice, path, body)

    assert response.status_code == 400
    error = response.json()
    details = error["details"] if "details" in error else error["error"]["details"]
    assert details == {"max_tokens": 16_385, "max_output_tokens": 16_384, "model": "gpt-4o-mini"}
    assert_nothing_stored()
    assert fake_upstream.requests == []


def test_an_operator_sets_the_ceiling_of_a_model_by_prefix(alice: Persona, settings) -> None:
    settings.LLM_MAX_OUTPUT_TOKENS = {"off": 50}

    refused = post_json(alice, "/api/v1/chat", {"user_message": "Hi", "max_tokens": 51})
    answered = post_json(alice, "/api/v1/chat", {"user_message": "Hi", "max_tokens": 50})

    assert_refused(refused, 400, "max_tokens_too_large")
    assert answered.status_code == 200


def test_a_delete_to_a_session_address_no_id_can_have_is_a_json_404_not_a_csrf_page(alice: Persona) -> None:
    # The API's clients send no CSRF token; the catch-all 404 must not ask for one.
    alice.client.enforce_csrf_checks = True
    assert_refused(alice.client.delete("/api/v1/sessions/a%20b"), 404, "not_found")
    assert_refused(alice.client.post("/api/v1/nowhere"), 404, "not_found")


def test_an_unknown_format_is_a_406_not_a_404(alice: Persona) -> None:
    assert_refused(alice.client.get("/api/v1/sessions?format=xml"), 406, "not_acceptable")


def test_an_empty_format_is_a_406_not_taken_for_no_format(alice: Persona) -> None:
    assert_refused(alice.client.get("/api/v1/sessions?format="), 406, "not_acceptable")
    assert alice.client.get("/api/v1/sessions?format=json").status_code == 200


def test_json_nested_deeper_than_the_decoder_goes_is_a_malformed_request(alice: Persona) -> None:
    body = '{"user_message": "Hi", "memory_context": ' + "[" * 100_000 + "]" * 100_000 + "}"

    response = alice.client.post("/api/v1/chat", data=body, content_type="application/json")

    assert_refused(response, 400, "malformed_request")
    assert_nothing_stored()


def test_unstorable_text_is_found_however_deep_it_is(alice: Persona) -> None:
    body = '{"user_message": "Hi", "x": ' + "[" * 500 + '"\\u0000"' + "]" * 500 + "}"

    response = alice.client.post("/api/v1/chat", data=body, content_type="application/json")

    assert assert_refused(response, 400, "invalid_text")["details"]["field"] == "x" + "[0]" * 500


def test_unstorable_text_is_found_in_a_body_in_another_charset(alice: Persona) -> None:
    # The quick look for escapes reads UTF-8 bytes; a UTF-16 body is always walked.
    body = json.dumps({"user_message": "Hi \x00"}).encode("utf-16")

    response = alice.client.post("/api/v1/chat", data=body, content_type="application/json; charset=utf-16")

    assert assert_refused(response, 400, "invalid_text")["details"] == {"field": "user_message"}


@pytest.mark.parametrize("query", ["to=0001-01-01", "to=0001-01-29", "from=0001-01-01&to=0001-01-01"])
def test_a_usage_period_at_the_beginning_of_the_calendar_is_a_400_or_an_answer_never_a_500(
    alice: Persona, query: str
) -> None:
    response = alice.client.get(f"/api/v1/usage?{query}")

    assert response.status_code in (200, 400), response.content
    if response.status_code == 400:
        assert response.json()["details"] == {"from": ["'to' is too early for the default period; send 'from' as well."]}


@pytest.mark.parametrize("line_break", ["\n", "\x85", "\u2028"])
@pytest.mark.parametrize("path", ["/api/v1/chat", "/api/v1/sessions"])
def test_a_model_name_with_a_line_break_is_refused_so_that_it_cannot_forge_a_log_line(
    alice: Persona, path: str, line_break: str
) -> None:
    body = {"user_message": "Hi", "model": f"gpt-4o{line_break}2026-01-01 00:00:00,000 - chat.turns - INFO - [-] forged"}

    response = post_json(alice, path, body)

    assert_refused(response, 400, "validation_error")
    assert response.json()["details"] == {"model": ["Must not contain control characters (such as a line break)."]}
    assert_nothing_stored()


def test_the_openai_api_refuses_a_model_name_with_a_line_break_too(alice: Persona) -> None:
    response = post_json(alice, "/v1/chat/completions", {"model": "a\rb", "messages": [{"role": "user", "content": "Hi"}]})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"


@pytest.mark.parametrize("parameter", ["from", "to", "key", "group_by"])
def test_a_usage_parameter_sent_empty_is_refused_not_taken_for_its_default(alice: Persona, parameter: str) -> None:
    response = alice.client.get(f"/api/v1/usage?{parameter}=")

    body = assert_refused(response, 400, "validation_error")
    assert body["details"] == {parameter: ["Send a value, or leave the parameter out."]}
