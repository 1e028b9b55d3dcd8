"""The Responses API through the official `openai` SDK over real HTTP (served server, fake upstream):
a response is a turn of a session, continued by previous_response_id, branched, streamed, stored."""

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest

from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.served import Served, manage

pytestmark = pytest.mark.e2e

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def sdk(served: Served, api_key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.base_url}/v1", api_key=api_key or served.api_key, max_retries=0)


def sent_messages(upstream: FakeUpstream, index: int) -> list[tuple[str, Any]]:
    return [(m["role"], m.get("content")) for m in upstream.requests[index].json["messages"]]


def test_previous_response_id_chains_three_turns_and_a_branch_sees_only_its_ancestors(
    upstream_server: Served, upstream: FakeUpstream
) -> None:
    upstream.enqueue(*(Behaviour(reply=reply) for reply in ("Hi Mina.", "Seoul is nice.", "You are Mina.", "Mina.")))
    client = sdk(upstream_server)

    first = client.responses.create(model="gpt-4o-mini", input="I am Mina.", instructions="Be brief.")
    second = client.responses.create(model="gpt-4o-mini", input="I live in Seoul.", previous_response_id=first.id)
    third = client.responses.create(model="gpt-4o-mini", input="Who am I?", previous_response_id=second.id)
    branch = client.responses.create(model="gpt-4o-mini", input="My name?", previous_response_id=first.id)

    assert (first.output_text, third.output_text, branch.output_text) == ("Hi Mina.", "You are Mina.", "Mina.")
    assert first.id.startswith("resp_") and first.status == "completed" and first.instructions == "Be brief."
    assert third.previous_response_id == second.id
    assert sent_messages(upstream, 0) == [("system", "Be brief."), ("user", "I am Mina.")]
    # Instructions are the request's own: not carried to the next response.
    assert sent_messages(upstream, 2) == [
        ("user", "I am Mina."), ("assistant", "Hi Mina."), ("user", "I live in Seoul."),
        ("assistant", "Seoul is nice."), ("user", "Who am I?"),
    ]
    assert sent_messages(upstream, 3) == [("user", "I am Mina."), ("assistant", "Hi Mina."), ("user", "My name?")]
    assert third.usage.input_tokens > 0 and third.usage.total_tokens == third.usage.input_tokens + third.usage.output_tokens


def test_retrieve_input_items_delete_and_what_another_key_sees(upstream_server: Served, upstream: FakeUpstream) -> None:
    upstream.enqueue(Behaviour(reply="Stored."))
    client = sdk(upstream_server)
    created = client.responses.create(model="gpt-4o-mini", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Keep this."}]},
    ], metadata={"app": "test"})
    other_key = manage("create_api_key", "--name", "other", env=upstream_server.env).strip().splitlines()[-1]

    retrieved = client.responses.retrieve(created.id)
    items = client.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError) as hidden:
        sdk(upstream_server, other_key).responses.retrieve(created.id)
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)

    assert (retrieved.id, retrieved.output_text, retrieved.metadata) == (created.id, "Stored.", {"app": "test"})
    assert [(item.type, item.role, item.content[0].text) for item in items.data] == [("message", "user", "Keep this.")]
    assert hidden.value.body["code"] == "response_not_found"


def test_store_false_keeps_nothing_retrievable_but_counts_the_call(upstream_server: Served, upstream: FakeUpstream) -> None:
    upstream.enqueue(Behaviour(reply="Gone.", usage=(5, 1)))
    client = sdk(upstream_server)

    created = client.responses.create(model="gpt-4o-mini", input="Forget me.", store=False)

    assert created.output_text == "Gone."
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_a_function_call_round_trip(upstream_server: Served, upstream: FakeUpstream) -> None:
    upstream.enqueue(Behaviour(reply="", tool_calls=(("get_weather", '{"city": "Paris"}'),)),
                     Behaviour(reply="Sunny in Paris."))
    client = sdk(upstream_server)

    first = client.responses.create(model="gpt-4o-mini", input="Weather in Paris?", tools=[WEATHER])
    call = next(item for item in first.output if item.type == "function_call")
    second = client.responses.create(model="gpt-4o-mini", previous_response_id=first.id, tools=[WEATHER], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ])

    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    assert second.output_text == "Sunny in Paris."
    assert upstream.requests[0].json["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER["parameters"]}}]
    assert [m["role"] for m in upstream.requests[1].json["messages"]] == ["user", "assistant", "tool"]


def test_a_stream_sends_its_events_in_order_and_its_deltas_make_the_text(
    upstream_server: Served, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Behaviour(reply="one two three"))

    events = list(sdk(upstream_server).responses.create(model="gpt-4o-mini", input="Count.", stream=True))

    kinds = [event.type for event in events]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text == "one two three"


def test_the_async_sdk_and_the_stream_helper(upstream_server: Served, upstream: FakeUpstream) -> None:
    upstream.enqueue(Behaviour(reply="", tool_calls=(("get_weather", '{"city": "Oslo"}'),)))

    async def run() -> Any:
        async with openai.AsyncOpenAI(base_url=f"{upstream_server.base_url}/v1", api_key=upstream_server.api_key,
                                      max_retries=0) as client:
            async with client.responses.stream(model="gpt-4o-mini", input="Oslo?", tools=[WEATHER]) as stream:
                async for _event in stream:
                    pass
                return await stream.get_final_response()

    final = asyncio.run(run())

    call = final.output[0]
    assert (call.type, call.name, call.arguments) == ("function_call", "get_weather", '{"city": "Oslo"}')


def test_bad_requests_are_refused_naming_what_is_wrong(upstream_server: Served) -> None:
    client = sdk(upstream_server)
    cases = [
        ({"input": "Hi", "tools": [{"type": "web_search"}]}, "tools"),
        ({"input": "Hi", "previous_response_id": "resp_x", "conversation": "c"}, "conversation"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input"),
        ({"input": "Hi", "extra_body": {"modalities": ["audio"]}}, "modalities"),
    ]
    for body, field in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model="gpt-4o-mini", **body)
        assert field in refused.value.body["details"], body
        assert field in refused.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-4o-mini", input="Hi", previous_response_id="resp_nope")


def test_a_conversation_continued_through_chat_completions_with_x_session_id(
    upstream_server: Served, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Behaviour(reply="Noted."), Behaviour(reply="You said blue."))
    client = sdk(upstream_server)
    first = client.responses.create(model="gpt-4o-mini", input="My colour is blue.")
    session_id = httpx.get(f"{upstream_server.base_url}/api/v1/sessions", headers=upstream_server.headers()).json()[
        "results"][0]["session_id"]

    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "What did I say?"}],
                                   extra_headers={"X-Session-Id": session_id})

    assert first.output_text == "Noted."
    assert sent_messages(upstream, 1) == [
        ("user", "My colour is blue."), ("assistant", "Noted."), ("user", "What did I say?")
    ]


def test_a_conversation_created_with_items_continued_and_listed(upstream_server: Served, upstream: FakeUpstream) -> None:
    upstream.enqueue(Behaviour(reply="Your dog is Rex."))
    client = sdk(upstream_server)
    conversation = client.conversations.create(
        items=[{"type": "message", "role": "user", "content": "My dog is Rex."},
               {"type": "message", "role": "assistant", "content": "Nice name."}],
        metadata={"topic": "pets"},
    )

    answer = client.responses.create(model="gpt-4o-mini", input="What is my dog called?", conversation=conversation.id)
    items = client.conversations.items.list(conversation.id, order="asc")
    updated = client.conversations.update(conversation.id, metadata={"topic": "dogs"})
    first_item = client.conversations.items.retrieve(items.data[0].id, conversation_id=conversation.id)
    client.conversations.items.delete(items.data[0].id, conversation_id=conversation.id)
    remaining = client.conversations.items.list(conversation.id, order="asc")
    client.conversations.delete(conversation.id)

    assert conversation.id.startswith("conv_") and conversation.metadata == {"topic": "pets"}
    assert answer.output_text == "Your dog is Rex." and answer.conversation.id == conversation.id
    assert sent_messages(upstream, 0) == [
        ("user", "My dog is Rex."), ("assistant", "Nice name."), ("user", "What is my dog called?")
    ]
    assert [(item.role, item.content[0].text) for item in items.data] == [
        ("user", "My dog is Rex."), ("assistant", "Nice name."), ("user", "What is my dog called?"),
        ("assistant", "Your dog is Rex."),
    ]
    assert updated.metadata == {"topic": "dogs"}
    assert first_item.content[0].text == "My dog is Rex."
    assert len(remaining.data) == 3
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conversation.id)
