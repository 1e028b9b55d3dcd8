"""The OpenAI-compatible API, driven by the official `openai` SDK over real HTTP (served server,
fake upstream), plus the edges of its request format in process."""

import asyncio
from typing import Any

import httpx
import openai
import pytest

from chat.models import ApiKey, ChatSession, UsageRecord
from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.personas import Persona
from tests.support.served import Served, manage

COMPLETIONS_URL = "/v1/chat/completions"


def sdk(served: Served, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.base_url}/v1", api_key=served.api_key, max_retries=0, **options)


def async_sdk(served: Served) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{served.base_url}/v1", api_key=served.api_key, max_retries=0)


def usage_of(served: Served) -> dict[str, int]:
    return httpx.get(f"{served.base_url}/api/v1/usage", headers=served.headers()).json()["totals"]


# --- Through the SDK, over real HTTP ---------------------------------------------------------


@pytest.mark.e2e
def test_the_sync_sdk_gets_a_completion_and_the_call_is_counted(upstream_server: Served, upstream: FakeUpstream) -> None:
    upstream.enqueue(Behaviour(reply="Paris.", usage=(14, 2)))
    before = usage_of(upstream_server)

    completion = sdk(upstream_server).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Capital of France?"}],
        max_tokens=50, temperature=0.2, top_p=0.9, seed=7,
    )

    assert completion.choices[0].message.content == "Paris."
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        14, 2, 16
    )
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    # Stateless: the client's messages went upstream as they were, with its sampling parameters.
    sent = upstream.requests[0].json
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["seed"]) == (50, 0.2, 0.9, 7)
    after = usage_of(upstream_server)
    assert after["requests"] - before["requests"] == 1
    assert after["total_tokens"] - before["total_tokens"] == 16


@pytest.mark.e2e
def test_the_async_sdk_streams_and_x_session_id_keeps_the_conversation(
    upstream_server: Served, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Behaviour(reply="Nice to meet you, Alice.", usage=(20, 5)), Behaviour(reply="You are Alice.", usage=(40, 3)))
    session = {"X-Session-Id": "sdk-session"}

    async def run() -> tuple[list[Any], list[Any]]:
        client = async_sdk(upstream_server)
        async with client:
            first = [chunk async for chunk in await client.chat.completions.create(
                model="gpt-4o-mini", stream=True, stream_options={"include_usage": True}, extra_headers=session,
                messages=[{"role": "system", "content": "You are kind."}, {"role": "user", "content": "I am Alice."}],
            )]
            second = [chunk async for chunk in await client.chat.completions.create(
                model="gpt-4o-mini", stream=True, extra_headers=session,
                messages=[{"role": "user", "content": "Who am I?"}],
            )]
        return first, second

    first, second = asyncio.run(run())

    assert "".join(c.choices[0].delta.content or "" for c in first if c.choices) == "Nice to meet you, Alice."
    assert first[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in first if c.choices][-1] == "stop"
    assert first[-1].choices == [] and first[-1].usage.total_tokens == 25
    assert all(c.usage is None for c in second), "no usage chunk unless asked for"
    assert "".join(c.choices[0].delta.content or "" for c in second if c.choices) == "You are Alice."
    # The second call sent only its new message; the server put the persona and history before it.
    assert upstream.requests[1].json["messages"] == [
        {"role": "system", "content": "You are kind."},
        {"role": "user", "content": "I am Alice."},
        {"role": "assistant", "content": "Nice to meet you, Alice."},
        {"role": "user", "content": "Who am I?"},
    ]
    messages = httpx.get(f"{upstream_server.base_url}/api/v1/sessions/sdk-session/messages",
                         headers=upstream_server.headers()).json()["results"]
    assert [(m["role"], m["content"], m["status"]) for m in messages] == [
        ("user", "I am Alice.", "complete"), ("assistant", "Nice to meet you, Alice.", "complete"),
        ("user", "Who am I?", "complete"), ("assistant", "You are Alice.", "complete"),
    ]


@pytest.mark.e2e
def test_the_sync_sdk_streams_and_the_async_sdk_completes(upstream_server: Served, upstream: FakeUpstream) -> None:
    upstream.enqueue(Behaviour(reply="one two three"), Behaviour(reply="whole"))

    with sdk(upstream_server).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Count."}], stream=True
    ) as stream:
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    async def complete() -> str:
        async with async_sdk(upstream_server) as client:
            result = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": [{"type": "text", "text": "Once."}]}]
            )
        return result.choices[0].message.content

    assert text == "one two three"
    assert asyncio.run(complete()) == "whole"
    # Text parts stay parts, as the client sent them.
    assert upstream.requests[1].json["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Once."}]}]


@pytest.mark.e2e
def test_errors_reach_the_sdk_as_its_own_exceptions(upstream_server: Served, upstream: FakeUpstream) -> None:
    client = sdk(upstream_server)
    messages = [{"role": "user", "content": "Hi"}]

    with pytest.raises(openai.AuthenticationError) as unauthenticated:
        openai.OpenAI(base_url=f"{upstream_server.base_url}/v1", api_key="llms_wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError) as unsupported:
        client.chat.completions.create(model="gpt-4o-mini", messages=messages, modalities=["audio"],
                                       audio={"voice": "alloy", "format": "wav"})
    upstream.enqueue(*[Behaviour(status=500)] * 3)
    with pytest.raises(openai.InternalServerError) as upstream_failed:
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    upstream.enqueue(Behaviour(reply="one two three four", drop_after_words=2))
    with pytest.raises(openai.APIError) as cut_off:
        with client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True) as stream:
            for _ in stream:
                pass
    with pytest.raises(openai.NotFoundError) as unknown_model:
        client.models.retrieve("no-such-model")

    assert unauthenticated.value.status_code == 401
    assert unauthenticated.value.body["code"] == "invalid_api_key"
    assert unsupported.value.body["code"] == "validation_error"
    assert set(unsupported.value.body["details"]) == {"audio", "modalities"}
    # The SDKs show only the message: it names what was refused.
    assert "audio: This server does not support this parameter." in unsupported.value.message
    assert "modalities: This server does not support this parameter." in unsupported.value.message
    assert upstream_failed.value.status_code == 502 and upstream_failed.value.body["code"] == "upstream_error"
    assert cut_off.value.body["code"] == "upstream_interrupted"
    assert cut_off.value.body["type"] == "server_error"
    assert unknown_model.value.body["code"] == "model_not_found"


@pytest.mark.e2e
def test_models_lists_what_the_key_may_use(upstream_server: Served) -> None:
    restricted = manage("create_api_key", "--name", "two-models", "--models", "gpt-4o-mini", "gpt-4o",
                         env=upstream_server.env).strip().splitlines()[-1]
    client = openai.OpenAI(base_url=f"{upstream_server.base_url}/v1", api_key=restricted, max_retries=0)

    assert [model.id for model in client.models.list()] == ["gpt-4o-mini", "gpt-4o"]
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "Hi"}])
    assert refused.value.body["code"] == "model_not_allowed"


# --- The request format, in process ------------------------------------------------------------


def post(persona: Persona, body: dict[str, Any], **headers: str) -> Any:
    return persona.client.post(COMPLETIONS_URL, body, format="json", **headers)


def test_a_stateless_call_stores_no_message_but_records_its_usage(alice: Persona, fake_upstream: FakeUpstream) -> None:
    fake_upstream.enqueue(Behaviour(reply="Hi.", usage=(9, 2)))

    response = post(alice, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]})

    assert response.status_code == 200, response.content
    assert "X-Session-Id" not in response.headers
    assert not ChatSession.objects.exists()
    record = UsageRecord.objects.get()
    assert (record.session_id, record.api_key_id, record.total_tokens, record.outcome) == (
        None, alice.api_key.pk, 11, "success"
    )


def test_x_session_id_names_the_session_in_the_response(alice: Persona, fake_upstream: FakeUpstream) -> None:
    response = post(alice, {"messages": [{"role": "developer", "content": "Terse."}, {"role": "user", "content": "Hi"}]},
                    HTTP_X_SESSION_ID="named")

    assert response.status_code == 200, response.content
    assert response.headers["X-Session-Id"] == "named"
    session = ChatSession.objects.get(public_id="named", api_key=alice.api_key)
    assert session.system_prompt == "Terse."
    assert response.headers["X-Message-Id"] == str(session.messages.get(role="assistant").pk)


@pytest.mark.parametrize(
    ("body", "headers", "field"),
    [
        ({"messages": []}, {}, "messages"),
        ({"messages": "hi"}, {}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, {}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, {}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, {}, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, {}, "stop"),
        ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}}, {}, "response_format"),
        ({"messages": [{"role": "user", "content": "x"}]}, {"HTTP_X_SESSION_ID": "no spaces allowed"}, "X-Session-Id"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
         {"HTTP_X_SESSION_ID": "s"}, "messages"),
    ],
)
def test_a_bad_request_is_refused_in_openai_shape_naming_the_field(
    alice: Persona, body: dict[str, Any], headers: dict[str, str], field: str
) -> None:
    response = post(alice, body, **headers)

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "validation_error"
    assert field in error["details"]
    assert error["message"]
    assert not UsageRecord.objects.exists() and not ChatSession.objects.exists()


def test_limits_hold_on_the_openai_endpoint_too(alice: Persona) -> None:
    ApiKey.objects.filter(pk=alice.api_key.pk).update(requests_per_minute=1)
    body = {"messages": [{"role": "user", "content": "Hi"}]}

    first = post(alice, body)
    second = post(alice, body)

    assert first.status_code == 200
    assert second.status_code == 429 and second.headers["Retry-After"]
    assert second.json()["error"]["type"] == "rate_limit_error"
    assert second.json()["error"]["code"] == "limit_requests_per_minute"
    assert UsageRecord.objects.count() == 1


def test_an_unknown_address_under_v1_is_a_404_in_openai_shape(alice: Persona) -> None:
    response = alice.client.get("/v1/embeddings")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_an_error_before_the_stream_goes_to_an_event_stream_client_as_an_error_event(alice: Persona) -> None:
    response = alice.client.post(COMPLETIONS_URL, {"model": "gpt-4o-mini", "messages": [], "stream": True},
                                 format="json", HTTP_ACCEPT="text/event-stream")

    assert response.status_code == 400
    assert response.content.decode().startswith("event: error\ndata: {\"error\":")


def test_a_client_accepting_event_streams_that_asks_for_one_answer_gets_json(alice: Persona) -> None:
    """Some libraries send `Accept: text/event-stream` on every call: `stream: false` is one JSON answer."""
    for body in ({"model": "offline", "messages": [{"role": "user", "content": "Hi"}]},
                 {"model": "offline", "messages": [{"role": "user", "content": "Hi"}], "stream": False}):
        response = alice.client.post(COMPLETIONS_URL, body, format="json", HTTP_ACCEPT="text/event-stream")

        assert (response.status_code, response["Content-Type"]) == (200, "application/json")
        assert response.json()["object"] == "chat.completion"


def test_a_refusal_of_a_request_for_one_answer_is_json_too(alice: Persona) -> None:
    response = alice.client.post(COMPLETIONS_URL, {"model": "offline", "messages": []}, format="json",
                                 HTTP_ACCEPT="text/event-stream")

    assert (response.status_code, response["Content-Type"]) == (400, "application/json")
    assert response.json()["error"]["code"] == "validation_error"


def test_a_message_too_long_is_refused_with_the_limit_filled_in(alice: Persona, settings: Any) -> None:
    settings.CHAT_MAX_MESSAGE_CHARS = 10
    body = {"model": "offline", "messages": [{"role": "user", "content": "x" * 11}]}

    english = alice.client.post(COMPLETIONS_URL, body, format="json")
    korean = alice.client.post(COMPLETIONS_URL, body, format="json", HTTP_ACCEPT_LANGUAGE="ko")

    assert english.status_code == 400
    assert english.json()["error"]["details"]["messages"] == {"0": ["A message may have at most 10 characters."]}
    assert "10" in korean.json()["error"]["details"]["messages"]["0"][0]
    assert "%(limit)d" not in korean.json()["error"]["details"]["messages"]["0"][0]


@pytest.mark.e2e
def test_a_key_without_restrictions_lists_and_retrieves_what_its_upstream_serves(
    upstream_server: Served, upstream: FakeUpstream
) -> None:
    """The server's default first, then upstream's own list: each can be retrieved, as it can be
    chatted with; a model upstream does not list is still 404."""
    upstream.models = ["gpt-4o-mini", "gpt-4.1", "o3-mini"]
    client = sdk(upstream_server)

    listed = [model.id for model in client.models.list()]

    assert listed == ["gpt-4o-mini", "gpt-4.1", "o3-mini"]
    assert client.models.retrieve("o3-mini").id == "o3-mini"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
