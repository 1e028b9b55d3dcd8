"""The two providers behind the one interface."""

import httpx2
import openai
import pytest
from asgiref.sync import async_to_sync

from chat import tokens
from chat.providers import CompletionRequest, StreamDelta, get_provider
from chat.providers.offline import OfflineProvider
from chat.providers.openai_compatible import OpenAICompatibleProvider, retry_wait_seconds, upstream_error_from
from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.personas import UPSTREAM_TEST_KEY

REQUEST = CompletionRequest(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=500, temperature=0.2
)


async def collect(provider, request: CompletionRequest) -> list:
    return [event async for event in provider.stream(request)]


def test_without_upstream_settings_the_offline_provider_is_chosen(settings) -> None:
    assert isinstance(get_provider(), OfflineProvider)
    settings.OPENAI_BASE_URL = "http://127.0.0.1:8000/v1"
    assert isinstance(get_provider(), OpenAICompatibleProvider)


def test_the_offline_provider_is_deterministic_and_counts_like_everything_else() -> None:
    first = async_to_sync(OfflineProvider().complete)(REQUEST)
    second = async_to_sync(OfflineProvider().complete)(REQUEST)

    assert first == second
    assert first.model == "offline"
    assert first.prompt_tokens == tokens.count_prompt_tokens(REQUEST.messages, model="offline")
    assert first.completion_tokens == tokens.count_text_tokens(first.text, model="offline")


def test_the_offline_provider_streams_word_by_word_then_reports_usage() -> None:
    events = async_to_sync(collect)(OfflineProvider(), REQUEST)

    *deltas, final = events
    assert all(isinstance(event, StreamDelta) for event in deltas)
    assert len(deltas) == len(final.text.split())
    assert "".join(delta.text for delta in deltas) == final.text
    assert final.completion_tokens > 0


def test_the_offline_provider_honours_max_tokens() -> None:
    short = CompletionRequest(model="offline", messages=REQUEST.messages, max_tokens=5, temperature=0)

    completion = async_to_sync(OfflineProvider().complete)(short)

    assert (completion.completion_tokens, completion.finish_reason) == (5, "length")


def test_the_openai_compatible_provider_streams_and_asks_for_usage(fake_upstream: FakeUpstream) -> None:
    fake_upstream.enqueue(Behaviour(reply="Once upon a time", usage=(9, 4)))
    provider = OpenAICompatibleProvider(
        api_key=UPSTREAM_TEST_KEY, base_url=fake_upstream.base_url, timeout=5, max_retries=0
    )

    *deltas, final = async_to_sync(collect)(provider, REQUEST)

    assert [d.text.strip() for d in deltas] == ["Once", "upon", "a", "time"]
    assert (final.text, final.prompt_tokens, final.completion_tokens, final.usage_estimated) == (
        "Once upon a time", 9, 4, False,
    )
    sent = fake_upstream.requests[0].json
    assert (sent["stream"], sent["stream_options"]) == (True, {"include_usage": True})


def test_the_openai_compatible_provider_retries_a_503_a_bounded_number_of_times(fake_upstream: FakeUpstream) -> None:
    fake_upstream.enqueue(Behaviour(status=503), Behaviour(status=503), Behaviour(reply="Third time lucky"))
    provider = OpenAICompatibleProvider(
        api_key=UPSTREAM_TEST_KEY, base_url=fake_upstream.base_url, timeout=5, max_retries=2
    )

    completion = async_to_sync(provider.complete)(REQUEST)

    assert completion.text == "Third time lucky"
    assert len(fake_upstream.requests) == 3


def _status_error(status: int, **headers: str) -> openai.APIStatusError:
    response = httpx2.Response(status, headers=headers, request=httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions"))
    return openai.APIStatusError("upstream said no", response=response, body=None)


@pytest.mark.parametrize(
    ("error", "waits"),
    [
        (_status_error(429, **{"retry-after": "2"}), (2.0, 2.0)),
        (_status_error(429, **{"retry-after-ms": "1500", "retry-after": "7"}), (1.5, 1.5)),
        (_status_error(429, **{"retry-after": "Wed, 21 Oct 2099 07:28:00 GMT"}), None),  # far off: pass it on
        (_status_error(429, **{"retry-after": "30"}), None),
        (_status_error(429, **{"retry-after": "1e400"}), None),
        (_status_error(429, **{"retry-after": "nan"}), (0.375, 0.5)),
        (_status_error(429, **{"retry-after": "-5"}), (0.0, 0.0)),
        (_status_error(503), (0.375, 0.5)),  # backoff, less up to a quarter
        (_status_error(529), (0.375, 0.5)),
        (_status_error(503, **{"x-should-retry": "false"}), None),
        (_status_error(400, **{"x-should-retry": "true"}), (0.375, 0.5)),
        (_status_error(400), None),
        (_status_error(401), None),
        (openai.APITimeoutError(request=httpx2.Request("POST", "http://127.0.0.1")), None),  # may be writing
    ],
)
def test_a_retry_waits_as_upstream_asks_and_only_where_no_answer_was_written(
    error: openai.OpenAIError, waits: tuple[float, float] | None
) -> None:
    wait = retry_wait_seconds(error, attempt=0)

    if waits is None:
        assert wait is None
    else:
        assert wait is not None and waits[0] <= wait <= waits[1]


def test_a_connection_that_never_reached_upstream_is_retried_one_that_broke_after_is_not() -> None:
    request = httpx2.Request("POST", "http://127.0.0.1")
    refused = openai.APIConnectionError(request=request)
    refused.__cause__ = httpx2.ConnectError("refused")
    dropped = openai.APIConnectionError(request=request)
    dropped.__cause__ = httpx2.RemoteProtocolError("peer closed connection without sending complete message body")

    assert retry_wait_seconds(refused, attempt=1) is not None
    assert retry_wait_seconds(dropped, attempt=0) is None


def test_an_absurd_retry_after_is_passed_on_as_at_most_an_hour() -> None:
    response = _status_error(429, **{"retry-after": "1e400"}).response
    error = upstream_error_from(openai.RateLimitError("slow down", response=response, body=None))

    assert error.retry_after == 3600
