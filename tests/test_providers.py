"""The two providers behind the one interface."""

from asgiref.sync import async_to_sync

from chat import tokens
from chat.providers import CompletionRequest, StreamDelta, get_provider
from chat.providers.offline import OfflineProvider
from chat.providers.openai_compatible import OpenAICompatibleProvider
from tests.conftest import UPSTREAM_TEST_KEY
from tests.fake_upstream import Behaviour, FakeUpstream

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
