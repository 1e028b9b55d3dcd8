"""Tools, structured output and images on /api/v1/chat (the original contract, extended), and what
the sessions' messages endpoint shows of them."""

import base64
import io
from typing import Any

import pytest
from PIL import Image

from chat.models import Message, StoredImage, UsageRecord
from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.personas import Persona

TOOL = {"type": "function", "function": {
    "name": "lookup_order", "parameters": {"type": "object", "properties": {"order_id": {"type": "integer"}}},
}}


def png(size: int = 4, colour: tuple[int, int, int] = (0, 128, 255)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat(persona: Persona, **body: Any) -> Any:
    return persona.client.post("/api/v1/chat", body, format="json")


def test_tools_then_tool_results_then_the_answer(alice: Persona, fake_upstream: FakeUpstream) -> None:
    fake_upstream.enqueue(Behaviour(reply="", tool_calls=(("lookup_order", '{"order_id": 42}'),)),
                          Behaviour(reply="Order 42 ships tomorrow."))

    first = chat(alice, session_id="orders", user_message="Where is order 42?", tools=[TOOL],
                 tool_choice={"type": "function", "function": {"name": "lookup_order"}})
    calls = first.json()["tool_calls"]
    second = chat(alice, session_id="orders", tools=[TOOL],
                  tool_results=[{"tool_call_id": calls[0]["id"], "content": '{"status": "packed"}'}])

    assert first.status_code == 200, first.content
    assert first.json()["finish_reason"] == "tool_calls"
    assert calls[0]["function"] == {"name": "lookup_order", "arguments": '{"order_id": 42}'}
    assert second.status_code == 200, second.content
    assert (second.json()["response_text"], second.json()["tool_calls"]) == ("Order 42 ships tomorrow.", [])
    sent = fake_upstream.requests
    assert sent[0].json["tool_choice"] == {"type": "function", "function": {"name": "lookup_order"}}
    assert [m["role"] for m in sent[1].json["messages"]] == ["user", "assistant", "tool"]
    listed = alice.client.get("/api/v1/sessions/orders/messages").json()["results"]
    assert [(m["role"], m["status"]) for m in listed] == [
        ("user", "complete"), ("assistant", "complete"), ("tool", "complete"), ("assistant", "complete")
    ]
    assert listed[1]["tool_calls"] == calls
    assert (listed[2]["tool_call_id"], listed[2]["content"]) == (calls[0]["id"], '{"status": "packed"}')


@pytest.mark.parametrize(
    ("body", "code", "named"),
    [
        ({"tool_results": [{"tool_call_id": "call_other", "content": "x"}]}, "tool_results_mismatch", "call_other"),
        ({"tool_results": []}, "validation_error", "user_message"),
        ({"user_message": "Hi", "tool_results": [{"tool_call_id": "c", "content": "x"}]}, "validation_error",
         "tool_results"),
        ({"user_message": "Hi", "images": ["ftp://example.com/a.png"]}, "validation_error", "images"),
        ({"user_message": "Hi", "images": ["data:image/png;base64,bm90IGFuIGltYWdl"]}, "validation_error", "images"),
        ({"user_message": "Hi", "tools": [{"type": "function", "function": {"name": "has space"}}]},
         "validation_error", "tools"),
        ({"user_message": "Hi", "response_format": {"type": "xml"}}, "validation_error", "response_format"),
    ],
)
def test_bad_tool_and_image_input_is_refused_naming_what_is_wrong(
    alice: Persona, fake_upstream: FakeUpstream, body: dict[str, Any], code: str, named: str
) -> None:
    fake_upstream.enqueue(Behaviour(reply="", tool_calls=(("lookup_order", "{}"),)))
    chat(alice, session_id="s", user_message="Go", tools=[TOOL])
    stored_before = list(Message.objects.values_list("id", "status"))

    response = chat(alice, session_id="s", **body)

    assert response.status_code == 400, response.content
    assert response.json()["error_code"] == code
    assert named in str(response.json())
    assert list(Message.objects.values_list("id", "status")) == stored_before


def test_images_are_stored_once_per_key_and_fetched_only_with_that_key(
    alice: Persona, bob: Persona, fake_upstream: FakeUpstream
) -> None:
    image = png()
    for session_id in ("one", "two"):
        response = chat(alice, session_id=session_id, user_message="Look", images=[image])
        assert response.status_code == 200, response.content
    chat(bob, user_message="Me too", images=[image])

    assert StoredImage.objects.filter(api_key=alice.api_key).count() == 1
    assert StoredImage.objects.count() == 2
    sent = fake_upstream.requests[1].json["messages"][-1]["content"]
    assert sent == [{"type": "text", "text": "Look"}, {"type": "image_url", "image_url": {"url": image, "detail": "auto"}}]
    part = alice.client.get("/api/v1/sessions/two/messages").json()["results"][0]["parts"][1]
    assert alice.client.get(part["url"]).content == base64.b64decode(image.split(",", 1)[1])
    StoredImage.objects.filter(api_key=bob.api_key).delete()
    refused = bob.client.get(part["url"])
    assert (refused.status_code, refused.json()["error_code"]) == (404, "image_not_found")


def test_an_image_is_counted_by_its_tiles(alice: Persona, fake_upstream: FakeUpstream) -> None:
    fake_upstream.enqueue(Behaviour(usage=None), Behaviour(usage=None))
    chat(alice, session_id="count", user_message="Look", images=[png(4)], model="gpt-4o")
    chat(alice, session_id="count-big", user_message="Look", images=[png(1024)], model="gpt-4o")

    small, large = (UsageRecord.objects.get(session__public_id=s) for s in ("count", "count-big"))
    # A 1024x1024 image at detail auto (high): 4 tiles of 170 and the base 85; a 4x4 image: 1 tile.
    assert large.prompt_tokens - small.prompt_tokens == (85 + 4 * 170) - (85 + 170)


def test_a_session_of_200_turns_stores_its_image_once(alice: Persona, settings: Any) -> None:
    """With the offline provider: the 50 KB image of turn 1 goes into every turn's prompt, and is
    stored once, never as base64 in a message row."""
    import random

    # Room for the whole session in the offline model's window.
    settings.LLM_CONTEXT_WINDOWS = {"offline": 128_000}
    side = 128
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), random.Random(7).randbytes(side * side * 3)).save(buffer, format="PNG")
    image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    assert 45_000 < len(buffer.getvalue()) < 55_000

    for turn in range(200):
        body = {"session_id": "long", "user_message": f"Turn {turn}", "max_tokens": 50}
        if turn == 0:
            body["images"] = [image]
        response = chat(alice, **body)
        assert response.status_code == 200, response.content

    # The last turn was sent the whole session, the image's message first.
    assert "It received 399 messages" in response.json()["response_text"]
    assert StoredImage.objects.count() == 1
    assert Message.objects.filter(session__public_id="long").count() == 400
    longest_row = max(len(m.content) + len(str(m.parts or "")) for m in Message.objects.all())
    assert longest_row < 2_000
