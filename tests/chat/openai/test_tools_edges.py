"""The edges of tools and images on both APIs, in process: what a careless or hostile client sends,
and what a long or cut-short answer costs."""

import base64
import io
from typing import Any

import httpx
import pytest
from PIL import Image

from chat.models import ChatSession, Message, StoredImage
from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.personas import Persona
from tests.support.served import Served

TOOL = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}


def png(colour: tuple[int, int, int] = (9, 9, 9)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def v1(persona: Persona, body: dict[str, Any], **headers: str) -> Any:
    return persona.client.post("/v1/chat/completions", {"model": "gpt-4o-mini", **body}, format="json", **headers)


def chat(persona: Persona, **body: Any) -> Any:
    return persona.client.post("/api/v1/chat", body, format="json")


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def streamed_chat(served: Served, **body: Any) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """POST /api/v1/chat with stream: true over real HTTP: the events' text, then the session's
    messages and usage records as the API shows them."""
    response = httpx.post(f"{served.base_url}/api/v1/chat", json={**body, "stream": True}, headers=served.headers(),
                          timeout=30)
    listed = [
        httpx.get(f"{served.base_url}/api/v1/sessions/{body['session_id']}/{what}", headers=served.headers()).json()
        for what in ("messages", "usage")
    ]
    return response.text, listed[0]["results"], listed[1]["results"]


@pytest.mark.e2e
def test_a_tool_call_cut_short_is_counted_by_what_was_written(upstream_server: Served, upstream: FakeUpstream) -> None:
    """Not stored (a call cut short is no call), but written, and paid for: its tokens count."""
    arguments = '{"city": "' + "very long name " * 200
    upstream.enqueue(Behaviour(events=(
        chunk({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                     "function": {"name": "weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}),
    )))

    events, messages, usage = streamed_chat(upstream_server, session_id="cut", user_message="Weather?", tools=[TOOL])

    assert "upstream_interrupted" in events
    assert usage[0]["outcome"] == "partial" and usage[0]["completion_tokens"] > 600
    assert messages[1]["status"] == "incomplete" and messages[1]["tool_calls"] is None


@pytest.mark.e2e
def test_a_nul_in_a_streamed_tool_call_is_stored_replaced(upstream_server: Served, upstream: FakeUpstream) -> None:
    upstream.enqueue(Behaviour(events=(
        chunk({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                     "function": {"name": "weather", "arguments": '{"city": "Pa'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '\u0000ris"}'}}]}, "tool_calls"),
        "[DONE]",
    )))

    events, messages, _usage = streamed_chat(upstream_server, session_id="nul", user_message="Weather?", tools=[TOOL])

    assert "event: done" in events
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Pa\ufffdris"}'


@pytest.mark.parametrize("parameters", [
    {"properties": ["a"]}, {"properties": {"a": "string"}}, {"properties": {"a": {"description": 5}}},
    {"properties": "abc"},
])
def test_a_malformed_tool_schema_is_counted_and_passed_on_not_a_500(
    alice: Persona, fake_upstream: FakeUpstream, parameters: dict[str, Any]
) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": parameters}}]

    assert chat(alice, user_message="Hi", tools=tools).status_code == 200
    assert v1(alice, {"messages": [{"role": "user", "content": "Hi"}], "tools": tools}).status_code == 200


def test_tool_results_and_a_new_question_in_one_request_are_both_kept(
    alice: Persona, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.enqueue(Behaviour(reply="", tool_calls=(("weather", '{"city": "Oslo"}'),)), Behaviour(reply="Cold."))
    first = v1(alice, {"messages": [{"role": "user", "content": "Oslo?"}], "tools": [TOOL]}, HTTP_X_SESSION_ID="both")
    call = first.json()["choices"][0]["message"]

    second = v1(alice, {"tools": [TOOL], "messages": [
        {"role": "user", "content": "Oslo?"}, call, {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"],
                                                     "content": "-5 C"},
        {"role": "user", "content": "And tomorrow?"},
    ]}, HTTP_X_SESSION_ID="both")

    assert second.status_code == 200, second.content
    assert [m["role"] for m in fake_upstream.requests[1].json["messages"]] == ["user", "assistant", "tool", "user"]
    assert list(Message.objects.order_by("id").values_list("role", "content")) == [
        ("user", "Oslo?"), ("assistant", ""), ("tool", "-5 C"), ("user", "And tomorrow?"), ("assistant", "Cold."),
    ]


def test_duplicate_tool_results_are_named(alice: Persona, fake_upstream: FakeUpstream) -> None:
    fake_upstream.enqueue(Behaviour(reply="", tool_calls=(("weather", "{}"),)))
    call_id = chat(alice, session_id="dup", user_message="Go", tools=[TOOL]).json()["tool_calls"][0]["id"]

    response = chat(alice, session_id="dup", tool_results=[{"tool_call_id": call_id, "content": "a"}] * 2)

    assert response.status_code == 400
    assert response.json()["details"]["duplicate_tool_call_ids"] == [call_id]
    assert call_id in response.json()["error_message"]


def test_an_image_is_stored_as_what_its_header_says_not_as_what_it_is_called(alice: Persona) -> None:
    disguised = "data:image/jpeg;base64," + base64.b64encode(png()).decode()

    assert chat(alice, user_message="Look", images=[disguised]).status_code == 200

    assert StoredImage.objects.get().media_type == "image/png"


def test_an_image_too_large_is_refused_with_its_size_on_both_apis(alice: Persona, settings: Any) -> None:
    settings.CHAT_MAX_IMAGE_BYTES = 10
    image = "data:image/png;base64," + base64.b64encode(png()).decode()

    native = chat(alice, user_message="Look", images=[image])
    openai = v1(alice, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]}]})

    assert "An image may have at most 10 bytes" in str(native.json()["details"])
    assert "An image may have at most 10 bytes" in openai.json()["error"]["message"]


@pytest.mark.parametrize("message", [
    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://"}}]},
    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://exa mple.com/a.png"}}]},
    {"role": "user", "content": "Hi", "name": "a\nb"},
    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}] * 17},
])
def test_careless_messages_are_refused_naming_the_messages(alice: Persona, message: dict[str, Any]) -> None:
    response = v1(alice, {"messages": [message]})

    assert response.status_code == 400, response.content
    assert "messages" in response.json()["error"]["details"]
    assert response.json()["error"]["message"].startswith("The request is invalid: messages:")


def test_a_blank_user_message_of_text_parts_is_refused_with_a_session(alice: Persona) -> None:
    response = v1(alice, {"messages": [{"role": "user", "content": [{"type": "text", "text": "  "}]}]},
                  HTTP_X_SESSION_ID="blank")

    assert response.status_code == 400
    assert not ChatSession.objects.exists()


def test_deleting_a_session_deletes_its_images_unless_another_session_shows_them(alice: Persona) -> None:
    shared, own = (f"data:image/png;base64,{base64.b64encode(png(c)).decode()}" for c in ((1, 1, 1), (2, 2, 2)))
    chat(alice, session_id="a", user_message="Look", images=[shared, own])
    chat(alice, session_id="b", user_message="Look", images=[shared])

    assert alice.client.delete("/api/v1/sessions/a").status_code == 204

    assert StoredImage.objects.count() == 1
    part = alice.client.get("/api/v1/sessions/b/messages").json()["results"][0]["parts"][1]
    assert alice.client.get(part["url"]).status_code == 200
