"""What an upstream may answer a streamed request with, besides a proper stream: an unreadable
answer is upstream_bad_response, a stream that stops before its end is an interrupted answer, a
read that times out is a timeout, and usage that would overflow the token columns is not believed.
The provider against the fake upstream over real HTTP; what a served server stores of such answers
is in tests/e2e/test_faults.py."""

from typing import Any

import pytest
from asgiref.sync import async_to_sync

from chat.exceptions import UpstreamBadResponse, UpstreamError, UpstreamInterrupted, UpstreamTimeout
from chat.providers import Completion, CompletionRequest, StreamDelta
from chat.providers.openai_compatible import OpenAICompatibleProvider
from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.personas import UPSTREAM_TEST_KEY

REQUEST = CompletionRequest(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], max_tokens=50,
                            temperature=0)


def chunk(content: Any = None, *, finish_reason: Any = None, choices: Any = "default", **fields: Any) -> dict:
    body = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4o-mini", **fields}
    if choices == "default":
        choices = [{"index": 0, "delta": {"content": content}, "finish_reason": finish_reason}]
    if choices is not None:
        body["choices"] = choices
    return body


def provider(fake: FakeUpstream, timeout: float = 5) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider(api_key=UPSTREAM_TEST_KEY, base_url=fake.base_url, timeout=timeout, max_retries=0)


def stream(fake: FakeUpstream, *behaviours: Behaviour, timeout: float = 5) -> tuple[list[Any], BaseException | None]:
    """What the provider yields for one streamed request, and the error that ended it, if any."""
    fake.enqueue(*behaviours)
    received: list[Any] = []

    async def read() -> BaseException | None:
        try:
            async for piece in provider(fake, timeout).stream(REQUEST):
                received.append(piece)
        except Exception as exc:  # noqa: BLE001 - the error is what the test looks at
            return exc
        return None

    return received, async_to_sync(read)()


def test_a_stream_answered_with_plain_json_is_a_bad_response(fake_upstream: FakeUpstream) -> None:
    completion = {"id": "x", "object": "chat.completion", "model": "gpt-4o-mini", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}]}

    received, error = stream(fake_upstream, Behaviour(body=completion))

    assert received == [] and isinstance(error, UpstreamBadResponse)
    assert str(error) == "The model provider answered a streamed request with something that is not a stream."


def test_a_stream_that_stops_without_its_end_is_interrupted_not_whole(fake_upstream: FakeUpstream) -> None:
    received, error = stream(fake_upstream, Behaviour(events=(chunk("Hello"), chunk(" there"))))

    assert [piece.text for piece in received] == ["Hello", " there"]
    assert isinstance(error, UpstreamInterrupted)


def test_an_empty_stream_is_a_bad_response(fake_upstream: FakeUpstream) -> None:
    received, error = stream(fake_upstream, Behaviour(events=()))

    assert received == [] and isinstance(error, UpstreamBadResponse)


def test_a_stream_of_done_alone_is_a_bad_response_not_an_empty_answer(fake_upstream: FakeUpstream) -> None:
    received, error = stream(fake_upstream, Behaviour(events=("[DONE]",)))

    assert received == [] and isinstance(error, UpstreamBadResponse)


@pytest.mark.parametrize("before", [(), (chunk("partial answer"),)], ids=["at once", "after some text"])
def test_an_error_reported_mid_stream_is_an_upstream_error_not_a_whole_answer(
    fake_upstream: FakeUpstream, before: tuple
) -> None:
    """vLLM's shape of an error in a stream (out of memory, say), followed by [DONE]."""
    events = (*before, {"error": {"message": "CUDA out of memory", "code": 500}}, "[DONE]")

    received, error = stream(fake_upstream, Behaviour(events=events))

    assert [piece.text for piece in received] == [c["choices"][0]["delta"]["content"] for c in before]
    assert type(error) is UpstreamError and "CUDA" not in str(error)


def test_chunks_without_choices_with_a_null_delta_or_content_in_parts_are_read(fake_upstream: FakeUpstream) -> None:
    received, error = stream(fake_upstream, Behaviour(events=(
        chunk(choices=None),  # no choices at all
        chunk(choices=[{"index": 0, "delta": None, "finish_reason": None}]),
        chunk([{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]),
        chunk(None, finish_reason="stop"),
        chunk(choices=[], usage={"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}),
        "[DONE]",
    )))

    assert error is None
    *deltas, final = received
    assert [delta.text for delta in deltas] == ["Hello"] and all(isinstance(d, StreamDelta) for d in deltas)
    assert isinstance(final, Completion)
    assert (final.text, final.finish_reason, final.prompt_tokens, final.completion_tokens, final.usage_estimated) == (
        "Hello", "stop", 5, 1, False,
    )


@pytest.mark.parametrize("bad_chunk", [
    chunk("Hi", finish_reason=7),  # a finish reason that is not a string
    chunk({"text": "Hi"}),  # content that is neither a string nor text parts
    chunk(choices={"index": 0}),  # choices that are not a list
    chunk(choices=[{"index": 0, "delta": "Hi", "finish_reason": None}]),  # a delta that is not an object
    "{not json",
    "[1, 2]",
])
def test_an_unreadable_chunk_is_a_bad_response(fake_upstream: FakeUpstream, bad_chunk: Any) -> None:
    received, error = stream(fake_upstream, Behaviour(events=(bad_chunk, "[DONE]")))

    assert received == [] and isinstance(error, UpstreamBadResponse)


def test_a_read_that_times_out_mid_stream_is_a_timeout(fake_upstream: FakeUpstream) -> None:
    behaviour = Behaviour(events=(chunk("Hello"), chunk(" there", finish_reason="stop"), "[DONE]"), word_delay=2)

    received, error = stream(fake_upstream, behaviour, timeout=0.5)

    assert [piece.text for piece in received] == ["Hello"]
    assert isinstance(error, UpstreamTimeout)


@pytest.mark.parametrize("streamed", [False, True])
def test_usage_whose_sum_would_overflow_the_token_columns_is_not_believed(
    fake_upstream: FakeUpstream, streamed: bool
) -> None:
    fake_upstream.enqueue(Behaviour(reply="Hello", usage=(2**31 - 10, 100)))

    if streamed:
        *_, completion = async_to_sync(_collect)(provider(fake_upstream).stream(REQUEST))
    else:
        completion = async_to_sync(provider(fake_upstream).complete)(REQUEST)

    assert completion.usage_estimated
    assert (completion.prompt_tokens, completion.completion_tokens) == (8, 1)  # our own count


async def _collect(pieces: Any) -> list[Any]:
    return [piece async for piece in pieces]
