"""Tools, structured output and images on the OpenAI-compatible API, driven by the official `openai`
SDK over real HTTP (served server, fake upstream): what an agent framework does, kept by the server."""

import base64
import io
import json
import random
from typing import Any

import httpx
import openai
import pytest
from PIL import Image
from pydantic import BaseModel

from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.served import Served

pytestmark = pytest.mark.e2e

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}


def sdk(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.base_url}/v1", api_key=served.api_key, max_retries=0)


def png_data_url(size: int = 8, *, noise_bytes: int = 0, seed: int = 1) -> str:
    """A real PNG as a data URL; with `noise_bytes`, about that large (noise does not compress)."""
    if noise_bytes:
        side = int((noise_bytes / 3) ** 0.5)
        pixels = random.Random(seed).randbytes(side * side * 3)
        image = Image.frombytes("RGB", (side, side), pixels)
    else:
        image = Image.new("RGB", (size, size), (200, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def messages_of(served: Served, session_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{served.base_url}/api/v1/sessions/{session_id}/messages", headers=served.headers())
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_a_stateless_tool_round_trip(upstream_server: Served, upstream: FakeUpstream) -> None:
    upstream.enqueue(Behaviour(reply="", tool_calls=(("get_weather", '{"city": "Paris"}'),)),
                     Behaviour(reply="It is sunny in Paris."))
    client = sdk(upstream_server)
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]

    first = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL],
                                           tool_choice="auto", parallel_tool_calls=False)
    call = first.choices[0].message.tool_calls[0]
    messages += [first.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    second = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL])

    assert first.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert second.choices[0].message.content == "It is sunny in Paris."
    sent = [request.json for request in upstream.requests]
    assert sent[0]["tools"] == [WEATHER_TOOL]
    assert (sent[0]["tool_choice"], sent[0]["parallel_tool_calls"]) == ("auto", False)
    assert [m["role"] for m in sent[1]["messages"]] == ["user", "assistant", "tool"]
    assert sent[1]["messages"][1]["tool_calls"] == [
        {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    ]
    assert sent[1]["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": call.id}


def test_with_x_session_id_the_second_request_sends_only_the_tool_result(
    upstream_server: Served, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Behaviour(reply="", tool_calls=(("get_weather", '{"city": "Seoul"}'),)),
                     Behaviour(reply="Seoul is rainy."), Behaviour(reply="You asked about Seoul."))
    client = sdk(upstream_server)
    session = {"X-Session-Id": "agent-tools"}

    first = client.chat.completions.create(
        model="gpt-4o-mini", tools=[WEATHER_TOOL], extra_headers=session,
        messages=[{"role": "user", "content": "Weather in Seoul?"}],
    )
    call_id = first.choices[0].message.tool_calls[0].id
    second = client.chat.completions.create(
        model="gpt-4o-mini", tools=[WEATHER_TOOL], extra_headers=session,
        messages=[{"role": "tool", "tool_call_id": call_id, "content": "rainy"}],
    )
    client.chat.completions.create(model="gpt-4o-mini", extra_headers=session,
                                   messages=[{"role": "user", "content": "Which city?"}])

    assert second.choices[0].message.content == "Seoul is rainy."
    sent = [request.json["messages"] for request in upstream.requests]
    assert [m["role"] for m in sent[1]] == ["user", "assistant", "tool"]
    assert sent[1][1]["tool_calls"][0]["id"] == call_id
    assert [m["role"] for m in sent[2]] == ["user", "assistant", "tool", "assistant", "user"]
    stored = messages_of(upstream_server, "agent-tools")
    assert [(m["role"], m["status"]) for m in stored] == [
        ("user", "complete"), ("assistant", "complete"), ("tool", "complete"), ("assistant", "complete"),
        ("user", "complete"), ("assistant", "complete"),
    ]
    assert stored[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Seoul"}'}
    assert stored[2]["tool_call_id"] == call_id


def test_a_result_for_an_unknown_call_is_refused_naming_it(upstream_server: Served, upstream: FakeUpstream) -> None:
    upstream.enqueue(Behaviour(reply="", tool_calls=(("get_weather", '{"city": "Oslo"}'),)))
    client = sdk(upstream_server)
    session = {"X-Session-Id": "agent-unknown-call"}
    client.chat.completions.create(model="gpt-4o-mini", tools=[WEATHER_TOOL], extra_headers=session,
                                   messages=[{"role": "user", "content": "Weather in Oslo?"}])

    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", extra_headers=session,
                                       messages=[{"role": "tool", "tool_call_id": "call_nope", "content": "x"}])

    assert refused.value.code == "tool_results_mismatch"
    assert "call_nope" in refused.value.message
    assert len(upstream.requests) == 1


def test_a_streamed_tool_call_arrives_whole_and_is_stored_whole(upstream_server: Served, upstream: FakeUpstream) -> None:
    arguments = '{"city": "Lisbon", "unit": "celsius"}'
    upstream.enqueue(Behaviour(reply="", tool_calls=(("get_weather", arguments),)))

    chunks = list(sdk(upstream_server).chat.completions.create(
        model="gpt-4o-mini", tools=[WEATHER_TOOL], stream=True, extra_headers={"X-Session-Id": "agent-stream"},
        messages=[{"role": "user", "content": "Weather in Lisbon?"}],
    ))

    pieces = [call for chunk in chunks if chunk.choices for call in chunk.choices[0].delta.tool_calls or ()]
    assert pieces[0].id and pieces[0].function.name == "get_weather"
    assert "".join(piece.function.arguments or "" for piece in pieces) == arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    stored = messages_of(upstream_server, "agent-stream")[-1]
    assert stored["tool_calls"] == [
        {"id": pieces[0].id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    ]


class City(BaseModel):
    name: str
    population: int


def test_parse_with_a_pydantic_model(upstream_server: Served, upstream: FakeUpstream) -> None:
    upstream.enqueue(Behaviour(reply='{"name": "Paris", "population": 2100000}'))

    completion = sdk(upstream_server).chat.completions.parse(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Describe Paris."}], response_format=City,
    )

    assert completion.choices[0].message.parsed == City(name="Paris", population=2100000)
    sent = upstream.requests[0].json["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "City"
    assert sent["json_schema"]["schema"]["properties"]["population"] == {"title": "Population", "type": "integer"}


def test_an_image_sent_at_turn_one_is_still_sent_at_turn_three(upstream_server: Served, upstream: FakeUpstream) -> None:
    image = png_data_url(16)
    client = sdk(upstream_server)
    session = {"X-Session-Id": "vision"}
    client.chat.completions.create(model="gpt-4o-mini", extra_headers=session, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
    ]}])
    for question in ("Which colour?", "How large?"):
        client.chat.completions.create(model="gpt-4o-mini", extra_headers=session,
                                       messages=[{"role": "user", "content": question}])

    third = upstream.requests[2].json["messages"]
    assert third[0] == {"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
    ]}
    stored = messages_of(upstream_server, "vision")[0]
    assert stored["content"] == "What is this?"
    reference = stored["parts"][1]
    assert (reference["type"], reference["width"], reference["height"], reference["detail"]) == ("image", 16, 16, "low")
    fetched = httpx.get(f"{upstream_server.base_url}{reference['url']}", headers=upstream_server.headers())
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert "data:image/png;base64," + base64.b64encode(fetched.content).decode() == image


def test_text_parts_stay_parts_and_the_passed_parameters_go_upstream_as_sent(
    upstream_server: Served, upstream: FakeUpstream
) -> None:
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]

    sdk(upstream_server).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": parts, "name": "alice"}],
        max_completion_tokens=64, logprobs=True, top_logprobs=2, store=False, metadata={"app": "test"},
        reasoning_effort="low", service_tier="auto", n=2,
    )

    sent = upstream.requests[0].json
    assert sent["messages"] == [{"role": "user", "content": parts, "name": "alice"}]
    assert sent["max_completion_tokens"] == 64 and "max_tokens" not in sent
    assert {name: sent[name] for name in ("logprobs", "top_logprobs", "store", "metadata", "reasoning_effort",
                                          "service_tier", "n")} == {
        "logprobs": True, "top_logprobs": 2, "store": False, "metadata": {"app": "test"}, "reasoning_effort": "low",
        "service_tier": "auto", "n": 2,
    }


def test_no_max_tokens_goes_upstream_when_the_client_sends_none(upstream_server: Served, upstream: FakeUpstream) -> None:
    sdk(upstream_server).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    sdk(upstream_server).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}],
                                                 extra_headers={"X-Session-Id": "no-max-tokens"})

    assert all("max_tokens" not in request.json and "max_completion_tokens" not in request.json
               for request in upstream.requests)


def test_n_above_one_with_a_session_is_refused_clearly(upstream_server: Served, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(upstream_server).chat.completions.create(
            model="gpt-4o-mini", n=2, messages=[{"role": "user", "content": "Hi"}],
            extra_headers={"X-Session-Id": "two-answers"},
        )

    assert "n" in refused.value.body["details"]
    assert not upstream.requests


def test_with_no_upstream_the_offline_provider_shows_the_whole_tool_loop(offline_server: Served) -> None:
    """`make run` with nothing configured: the offline model calls the first tool with arguments made
    from its schema, answers its result by echoing it, and answers json_schema with a fitting object."""
    client = sdk(offline_server)
    session = {"X-Session-Id": "offline-tools"}

    first = client.chat.completions.create(model="offline", tools=[WEATHER_TOOL], extra_headers=session,
                                           messages=[{"role": "user", "content": "Weather?"}])
    call = first.choices[0].message.tool_calls[0]
    second = client.chat.completions.create(
        model="offline", tools=[WEATHER_TOOL], extra_headers=session,
        messages=[{"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}],
    )
    streamed = list(client.chat.completions.create(
        model="offline", tools=[WEATHER_TOOL], stream=True, messages=[{"role": "user", "content": "Weather?"}],
    ))
    parsed = client.chat.completions.parse(model="offline", response_format=City,
                                           messages=[{"role": "user", "content": "A city?"}])

    assert first.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "example"})
    assert second.choices[0].message.content == '[offline] The tool answered: "sunny, 21 C".'
    pieces = [piece for chunk in streamed if chunk.choices for piece in chunk.choices[0].delta.tool_calls or ()]
    assert pieces[0].id == call.id and "".join(p.function.arguments or "" for p in pieces) == call.function.arguments
    assert parsed.choices[0].message.parsed == City(name="example", population=0)
