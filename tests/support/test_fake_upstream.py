"""Proves that tests/support/fake_upstream.py behaves as documented, so other tests can rely on it.

Driven through the official ``openai`` SDK (sync and async) wherever the SDK can express
the request, because that is the client the project uses against real upstreams.
The fake itself uses no Django: these tests need no database.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.fake_upstream import DEFAULT_REPLY, FAULTS, Behaviour, FakeUpstream
from tests.support.processes import PROJECT_DIR

# 3 + 3 words, 2 messages: default prompt_tokens = 6 + 3 * 2 = 12.
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hi please"},
]
PROMPT_TOKENS = 12
REPLY_WORDS = DEFAULT_REPLY.split()  # default completion_tokens = 5


@pytest.fixture(scope="module")
def server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeUpstream) -> FakeUpstream:
    server.reset()
    return server


@pytest.fixture
def client(fake: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as sdk:
        yield sdk


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    """The server runs on another thread: poll for its bookkeeping to catch up."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


def test_completion_echoes_model_and_reports_default_usage(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-test", messages=MESSAGES)

    assert completion.object == "chat.completion"
    assert completion.id
    assert completion.model == "gpt-test"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == DEFAULT_REPLY
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == PROMPT_TOKENS
    assert completion.usage.completion_tokens == len(REPLY_WORDS)
    assert completion.usage.total_tokens == PROMPT_TOKENS + len(REPLY_WORDS)


def test_behaviours_are_consumed_in_order_then_default(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.enqueue(Behaviour(reply="one two", usage=(10, 20)), Behaviour(reply="second", usage=None))

    first = client.chat.completions.create(model="m", messages=MESSAGES)
    second = client.chat.completions.create(model="m", messages=MESSAGES)
    third = client.chat.completions.create(model="m", messages=MESSAGES)

    assert first.choices[0].message.content == "one two"
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens, first.usage.total_tokens) == (10, 20, 30)
    assert second.choices[0].message.content == "second"
    assert second.usage is None
    assert third.choices[0].message.content == DEFAULT_REPLY


def test_streaming_with_include_usage_sends_words_then_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)

    *word_chunks, finish_chunk, usage_chunk = chunks
    assert len(word_chunks) == len(REPLY_WORDS)
    assert word_chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in word_chunks) == DEFAULT_REPLY
    assert all(c.object == "chat.completion.chunk" and c.model == "m" for c in chunks)
    assert finish_chunk.choices[0].finish_reason == "stop"
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens) == (PROMPT_TOKENS, 5)


def test_streaming_without_usage_has_no_usage_chunk(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.enqueue(Behaviour(reply="a  b\nc ", usage=None))

    stream = client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)

    assert all(c.choices and c.usage is None for c in chunks)
    # Whitespace is kept inside the pieces, so the stream reassembles the exact reply.
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "a  b\nc "


async def _async_stream_contents(fake: FakeUpstream) -> list[str]:
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        return [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]


def test_async_streaming_honours_word_delay(fake: FakeUpstream) -> None:
    fake.enqueue(Behaviour(reply="slow words here", word_delay=0.1))

    started = time.monotonic()
    contents = asyncio.run(_async_stream_contents(fake))

    assert contents == ["slow", " words", " here", ""]
    assert time.monotonic() - started >= 0.2  # two gaps between three words


def test_rate_limit_carries_retry_after(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.enqueue(Behaviour(status=429, headers={"retry-after": "7"}))

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=MESSAGES)

    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"] == "7"


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (400, openai.BadRequestError, None),
        (401, openai.AuthenticationError, "invalid_api_key"),
        (404, openai.NotFoundError, "model_not_found"),
        (500, openai.InternalServerError, None),
        (502, openai.InternalServerError, None),
        (503, openai.InternalServerError, None),
    ],
)
def test_default_error_bodies_map_to_sdk_errors(
    fake: FakeUpstream, client: openai.OpenAI, status: int, error: type[openai.APIStatusError], code: str | None
) -> None:
    fake.enqueue(Behaviour(status=status))

    with pytest.raises(error) as caught:
        client.chat.completions.create(model="m", messages=MESSAGES)

    assert caught.value.status_code == status
    assert caught.value.code == code


def test_custom_error_body_is_sent_verbatim(fake: FakeUpstream, client: openai.OpenAI) -> None:
    body = {
        "error": {"message": "context too long", "type": "invalid_request_error", "code": "context_length_exceeded"}
    }
    fake.enqueue(Behaviour(status=400, error_body=body))

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=MESSAGES)

    assert caught.value.code == "context_length_exceeded"


def test_configured_api_key_is_enforced() -> None:
    with FakeUpstream(api_key="secret") as fake:
        with openai.OpenAI(base_url=fake.base_url, api_key="wrong", max_retries=0) as sdk:
            with pytest.raises(openai.AuthenticationError) as caught:
                sdk.chat.completions.create(model="m", messages=MESSAGES)
        with openai.OpenAI(base_url=fake.base_url, api_key="secret", max_retries=0) as sdk:
            ok = sdk.chat.completions.create(model="m", messages=MESSAGES)

    assert caught.value.code == "invalid_api_key"
    assert caught.value.message.endswith("Incorrect API key provided.")
    assert ok.choices[0].message.content == DEFAULT_REPLY
    assert [r.headers["authorization"] for r in fake.requests] == ["Bearer wrong", "Bearer secret"]


def test_hang_times_out_and_counts_the_disconnect(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.enqueue(Behaviour(hang=True))

    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.5).chat.completions.create(model="m", messages=MESSAGES)

    wait_until(lambda: fake.disconnects == 1 and fake.active_requests == 0)


@pytest.mark.parametrize("stream", [False, True])
def test_malformed_body_raises_json_decode_error(fake: FakeUpstream, client: openai.OpenAI, stream: bool) -> None:
    # The SDK does not wrap this one: it is a plain json.JSONDecodeError (a ValueError),
    # not an openai.APIError, so callers must catch it separately.
    fake.enqueue(Behaviour(malformed=True))

    with pytest.raises(json.JSONDecodeError):
        response = client.chat.completions.create(model="m", messages=MESSAGES, stream=stream)
        if stream:
            list(response)


def test_streaming_drop_fails_mid_iteration(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.enqueue(Behaviour(drop_after_words=2))
    received: list[str] = []

    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    assert received == REPLY_WORDS[:1] + [" " + REPLY_WORDS[1]]


def test_non_streaming_drop_raises_connection_error(fake: FakeUpstream) -> None:
    async def call() -> None:
        async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as sdk:
            await sdk.chat.completions.create(model="m", messages=MESSAGES)

    fake.enqueue(Behaviour(drop_after_words=0))

    with pytest.raises(openai.APIConnectionError) as caught:
        asyncio.run(call())

    # The SDK wraps httpx2's "peer closed connection without sending complete message body".
    assert "RemoteProtocolError" in type(caught.value.__cause__).__name__


def test_requests_are_recorded_in_order(fake: FakeUpstream, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="first", messages=MESSAGES)
    client.chat.completions.create(model="second", messages=MESSAGES, temperature=0.5)
    client.models.list()

    first, second, models = fake.requests
    assert (first.method, first.path) == ("POST", "/v1/chat/completions")
    assert first.json == {"model": "first", "messages": MESSAGES}
    assert second.json == {"model": "second", "messages": MESSAGES, "temperature": 0.5}
    assert first.headers["authorization"] == "Bearer k"
    assert first.headers["content-type"] == "application/json"
    assert (models.method, models.path, models.json) == ("GET", "/v1/models", None)
    assert first.received_at <= second.received_at <= models.received_at <= time.monotonic()


def test_reset_clears_queue_requests_and_restores_settings(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.enqueue(Behaviour(status=500))
    fake.latency = 5.0
    fake.default_reply = "changed"
    client.models.list()

    fake.reset()

    assert fake.requests == []
    completion = client.chat.completions.create(model="m", messages=MESSAGES)
    assert completion.choices[0].message.content == DEFAULT_REPLY


def test_models_listing_and_unknown_path(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.models = ["alpha", "beta"]

    models = client.models.list().data
    unknown = httpx.get(fake.base_url + "/nope")

    assert [(m.id, m.object, m.created, m.owned_by) for m in models] == [
        ("alpha", "model", 0, "fake"),
        ("beta", "model", 0, "fake"),
    ]
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "invalid_request_error"


def test_latency_applies_unless_behaviour_overrides_delay(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.latency = 0.3
    fake.enqueue(Behaviour(), Behaviour(delay=0))

    started = time.monotonic()
    client.chat.completions.create(model="m", messages=MESSAGES)
    slow = time.monotonic() - started
    started = time.monotonic()
    client.chat.completions.create(model="m", messages=MESSAGES)
    fast = time.monotonic() - started

    assert slow >= 0.3
    assert fast < 0.3


def test_200_concurrent_slow_requests(fake: FakeUpstream) -> None:
    async def burst() -> list[str | None]:
        async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as sdk:
            completions = await asyncio.gather(
                *(sdk.chat.completions.create(model="m", messages=MESSAGES) for _ in range(200))
            )
        return [c.choices[0].message.content for c in completions]

    fake.latency = 0.2

    assert asyncio.run(burst()) == [DEFAULT_REPLY] * 200
    assert fake.max_concurrent >= 150
    assert len(fake.requests) == 200


def test_holds_1000_hanging_connections_and_sees_them_leave(fake: FakeUpstream) -> None:
    # Raw sockets rather than the SDK: 1,000 SDK calls cost seconds of client CPU, and the
    # point is the server's capacity, not the client's.
    count = 1000
    body = json.dumps({"model": "m", "messages": []}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: fake\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )

    async def hold() -> None:
        writers = []
        for _ in range(count):
            _, writer = await asyncio.open_connection("127.0.0.1", fake.port)
            writer.write(request)
            writers.append(writer)
        await asyncio.to_thread(wait_until, lambda: fake.active_requests == count)
        for writer in writers:
            writer.close()
        await asyncio.to_thread(wait_until, lambda: fake.disconnects == count and fake.active_requests == 0)

    fake.enqueue(*[Behaviour(hang=True)] * count)
    asyncio.run(hold())


def test_stop_is_fast_and_releases_hung_requests() -> None:
    fake = FakeUpstream().start()
    fake.enqueue(Behaviour(hang=True))
    outcome: list[BaseException] = []

    def call() -> None:
        with openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0, timeout=10) as sdk:
            try:
                sdk.chat.completions.create(model="m", messages=MESSAGES)
            except openai.APIError as exc:
                outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(lambda: fake.active_requests == 1)
    started = time.monotonic()
    fake.stop()
    stopped_in = time.monotonic() - started
    caller.join(timeout=5)

    assert stopped_in < 1.0
    assert len(outcome) == 1 and isinstance(outcome[0], openai.InternalServerError)
    assert outcome[0].status_code == 503
    fake.stop()  # idempotent


def test_standalone_entry_point_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "tests.support.fake_upstream", "--port", "0", "--reply", "bench reply"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR)}
    with subprocess.Popen(command, cwd=PROJECT_DIR, stdout=subprocess.PIPE, text=True, env=env) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            assert line.startswith("listening on http://127.0.0.1:")
            base_url = line.removeprefix("listening on ")
            with openai.OpenAI(base_url=base_url, api_key="k", max_retries=0) as sdk:
                completion = sdk.chat.completions.create(model="m", messages=MESSAGES)
            assert completion.choices[0].message.content == "bench reply"
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
        finally:
            if process.poll() is None:
                process.kill()


def _usage_seen(http: httpx.Client, request_id: str, *, stream: bool) -> tuple[int, int] | None:
    """The usage a chat completion reported, as a client sees it: None when it failed in any way
    (an error status, a dropped connection, an unreadable body, no answer within the timeout)."""
    body = {"model": "m", "messages": MESSAGES, "stream": stream, "stream_options": {"include_usage": True}}
    try:
        response = http.post("/chat/completions", json=body, headers={"x-request-id": request_id})
        if response.status_code != 200:
            return None
        if not stream:
            usage = response.json()["usage"]
        else:
            events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
            if events[-1] != "[DONE]":
                return None
            usage = json.loads(events[-2])["usage"]
    except (httpx.HTTPError, ValueError):
        return None
    return usage["prompt_tokens"], usage["completion_tokens"]


def test_fail_rate_injects_faults_and_stats_count_only_what_was_reported() -> None:
    # Seed 2 draws each fault at least once in these 40 calls.
    with FakeUpstream(fail_rate=0.5, seed=2) as fake:
        with httpx.Client(base_url=fake.base_url, timeout=0.3) as http:
            seen = {f"r{n}": _usage_seen(http, f"r{n}", stream=n % 2 == 1) for n in range(40)}
        wait_until(lambda: fake.stats()["in_flight"] == 0)
        stats = fake.stats(calls=True)

    succeeded = [usage for usage in seen.values() if usage is not None]
    assert stats["chat_completions"] == 40
    assert stats["behaviours"]["success"] == len(succeeded)
    assert set(stats["behaviours"]) == {"success", *FAULTS}
    assert stats["usage_reported"] == len(succeeded)
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (PROMPT_TOKENS * len(succeeded), 5 * len(succeeded))
    # Each call, by its request id: a success for the fake exactly when the client saw one.
    assert {c["request_id"]: c["behaviour"] == "success" for c in stats["calls"]} == {
        request_id: usage is not None for request_id, usage in seen.items()
    }
    assert all(c["client_left"] for c in stats["calls"] if c["behaviour"] == "hung")


def test_standalone_fail_rate_fails_every_call_and_serves_stats() -> None:
    command = [sys.executable, "-m", "tests.support.fake_upstream", "--port", "0", "--fail-rate", "1", "--seed", "2"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR)}
    with subprocess.Popen(command, cwd=PROJECT_DIR, stdout=subprocess.PIPE, text=True, env=env) as process:
        try:
            assert process.stdout is not None
            base_url = process.stdout.readline().strip().removeprefix("listening on ")
            with httpx.Client(base_url=base_url, timeout=0.3) as http:
                seen = [_usage_seen(http, f"r{n}", stream=n % 2 == 1) for n in range(14)]
                wait_until(lambda: http.get(base_url.removesuffix("/v1") + "/stats").json()["in_flight"] == 0)
                stats = http.get(base_url.removesuffix("/v1") + "/stats").json()
        finally:
            process.terminate()
            process.wait(timeout=5)

    assert seen == [None] * 14
    assert stats["chat_completions"] == 14
    assert "success" not in stats["behaviours"]
    assert sum(stats["behaviours"].values()) == 14
    assert (stats["usage_reported"], stats["prompt_tokens"], stats["completion_tokens"]) == (0, 0, 0)
