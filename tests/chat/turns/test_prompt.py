"""build_prompt: the core rule, as a pure function."""

import pytest

from chat import tokens
from chat.exceptions import ContextTooLong
from chat.turns.prompt import HistoryMessage, build_prompt, context_window_for_model

MODEL = "gpt-4o"


def stored(role: str, content: str, model: str = MODEL, message_id: int = 1) -> HistoryMessage:
    return HistoryMessage(
        message_id=message_id,
        role=role,
        content=content,
        token_count=tokens.count_message_tokens(role=role, content=content, model=model),
        token_encoding=tokens.encoding_name_for_model(model),
    )


def new(text: str) -> dict:
    """The turn's own message, as build_prompt takes it."""
    return {"new_messages": [{"role": "user", "content": text}],
            "new_messages_tokens": tokens.count_message_tokens(role="user", content=text, model=MODEL)}


def test_it_orders_persona_memory_history_then_the_new_message() -> None:
    history_newest_first = [stored("assistant", "Hi!"), stored("user", "Hello")]

    prompt = build_prompt(
        model=MODEL, max_tokens=100, system_prompt="Be kind.", memory_facts=["Name: Alice", "City: Seoul"],
        history_newest_first=history_newest_first, **new("How are you?"),
    )

    assert prompt.messages == [
        {"role": "system", "content": "Be kind."},
        {"role": "system", "content": "Memory:\nName: Alice\nCity: Seoul"},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "How are you?"},
    ]
    assert prompt.prompt_tokens == tokens.count_prompt_tokens(prompt.messages, model=MODEL)
    assert (prompt.history_used, prompt.history_truncated) == (2, False)


def test_it_keeps_the_newest_history_that_fits_and_never_splits_a_message(settings) -> None:
    settings.LLM_CONTEXT_WINDOWS = {"small": 60}
    history = [stored("user", "one two three four five six seven eight", "small") for _ in range(10)]

    prompt = build_prompt(
        model="small", max_tokens=10, system_prompt="", memory_facts=[],
        history_newest_first=iter(history), **new("Hi"),
    )

    # Budget 50: priming 3 + new message 5 = 8; each history message is 3 + 1 + 8 = 12, so 3 fit.
    assert prompt.history_used == 3
    assert prompt.history_truncated is True
    assert prompt.prompt_tokens == 8 + 36 <= 50
    assert all(m["content"] == "one two three four five six seven eight" for m in prompt.messages[:-1])


def test_it_stops_at_the_first_message_that_does_not_fit_rather_than_skipping_it(settings) -> None:
    settings.LLM_CONTEXT_WINDOWS = {"small": 60}
    newest_first = [stored("assistant", "short", "small"), stored("user", "word " * 40, "small"),
                    stored("user", "old", "small")]

    prompt = build_prompt(
        model="small", max_tokens=10, system_prompt="", memory_facts=[],
        history_newest_first=newest_first, **new("Hi"),
    )

    # "old" would fit, but sending it without the message after it would leave a gap.
    assert [m["content"] for m in prompt.messages] == ["short", "Hi"]


def test_it_reads_history_only_as_far_as_the_budget_reaches(settings) -> None:
    settings.LLM_CONTEXT_WINDOWS = {"small": 60}
    consumed = []

    def newest_first():
        for n in range(10_000):
            consumed.append(n)
            yield stored("user", "one two three four five six seven eight", "small")

    build_prompt(
        model="small", max_tokens=10, system_prompt="", memory_facts=[],
        history_newest_first=newest_first(), **new("Hi"),
    )

    assert len(consumed) == 4


def test_it_recounts_history_stored_under_another_encoding() -> None:
    text = "안녕하세요, 오늘 날씨가 좋네요!"
    stale = HistoryMessage(message_id=7, role="user", content=text, token_count=999_999, token_encoding="cl100k_base")

    prompt = build_prompt(
        model="gpt-4o", max_tokens=10, system_prompt="", memory_facts=[],
        history_newest_first=[stale], **new("Hi"),
    )

    assert prompt.history_used == 1
    assert prompt.prompt_tokens == tokens.count_prompt_tokens(prompt.messages, model="gpt-4o")


def test_it_refuses_when_the_new_message_alone_does_not_fit(settings) -> None:
    settings.LLM_CONTEXT_WINDOWS = {"small": 20}

    with pytest.raises(ContextTooLong) as raised:
        build_prompt(
            model="small", max_tokens=10, system_prompt="", memory_facts=[],
            history_newest_first=[], **new("one two three four five"),
        )

    assert raised.value.details == {"needed_tokens": 12, "context_window": 20, "max_tokens": 10}


@pytest.mark.parametrize(
    ("model", "window"),
    [("gpt-4o-mini", 128_000), ("gpt-4o", 128_000), ("gpt-4", 8_192), ("gpt-4-turbo-2024-04-09", 128_000),
     ("gpt-3.5-turbo", 16_385), ("llama3", 4_096), ("my-model-v2", 32_000)],
)
def test_context_windows_come_from_settings_then_the_table_then_the_default(settings, model: str, window: int) -> None:
    settings.LLM_DEFAULT_CONTEXT_WINDOW = 4_096
    settings.LLM_CONTEXT_WINDOWS = {"my-model": 32_000}

    assert context_window_for_model(model) == window


# --- Tool calls and their results are one unit ------------------------------------------------

CALL = [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]


def stored_message(role: str, content: str, message_id: int, **fields) -> HistoryMessage:
    from chat.sessions.content import message_tokens

    return HistoryMessage(
        message_id=message_id, role=role, content=content,
        token_count=message_tokens(role=role, content=content, model=MODEL, **fields),
        token_encoding=tokens.encoding_name_for_model(MODEL), **fields,
    )


def tool_exchange() -> list[HistoryMessage]:
    """Oldest first: a question, a tool call, its result, the answer."""
    return [
        stored_message("user", "Weather in Paris?", 1),
        stored_message("assistant", "", 2, tool_calls=CALL),
        stored_message("tool", "sunny", 3, tool_call_id="call_1"),
        stored_message("assistant", "It is sunny.", 4),
    ]


def test_a_tool_call_and_its_result_are_replayed_together() -> None:
    prompt = build_prompt(
        model=MODEL, max_tokens=100, system_prompt="", memory_facts=[],
        history_newest_first=list(reversed(tool_exchange())), **new("And tomorrow?"),
    )

    assert prompt.messages == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": CALL},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert prompt.prompt_tokens == tokens.count_prompt_tokens(prompt.messages, model=MODEL)


def test_a_budget_that_reaches_into_a_tool_exchange_takes_all_of_it_or_none(settings) -> None:
    history = tool_exchange()
    new_message = new("And tomorrow?")
    # Room for the answer and the tool result, but not for the call too: neither goes.
    fixed = tokens.REPLY_PRIMING_TOKENS + new_message["new_messages_tokens"]
    room = fixed + history[3].token_count + history[2].token_count + 1
    settings.LLM_CONTEXT_WINDOWS = {MODEL: room + 100}

    prompt = build_prompt(
        model=MODEL, max_tokens=100, system_prompt="", memory_facts=[],
        history_newest_first=list(reversed(history)), **new_message,
    )

    assert prompt.messages == [{"role": "assistant", "content": "It is sunny."}, {"role": "user", "content": "And tomorrow?"}]
    assert prompt.history_truncated


def test_a_result_whose_call_is_not_replayable_and_a_call_never_answered_are_left_out() -> None:
    exchange = tool_exchange()
    orphan_result = [exchange[0], exchange[2], exchange[3]]  # the call failed: not in the history
    unanswered_call = [exchange[0], exchange[1]]  # the client went on without answering it

    for history in (orphan_result, unanswered_call):
        prompt = build_prompt(
            model=MODEL, max_tokens=100, system_prompt="", memory_facts=[],
            history_newest_first=list(reversed(history)), **new("Next"),
        )
        assert all(message["role"] != "tool" and "tool_calls" not in message for message in prompt.messages)
        assert prompt.messages[0] == {"role": "user", "content": "Weather in Paris?"}


def test_tool_results_of_the_new_turn_always_bring_the_call_they_answer() -> None:
    exchange = tool_exchange()
    results = [{"role": "tool", "content": "sunny", "tool_call_id": "call_1"}]

    prompt = build_prompt(
        model=MODEL, max_tokens=100, system_prompt="", memory_facts=[],
        history_newest_first=[exchange[0]], answered_calls=exchange[1],
        new_messages=results, new_messages_tokens=exchange[2].token_count,
    )

    assert [message["role"] for message in prompt.messages] == ["user", "assistant", "tool"]
    assert prompt.messages[1]["tool_calls"] == CALL
    assert prompt.prompt_tokens == tokens.count_prompt_tokens(prompt.messages, model=MODEL)


def test_history_stops_at_the_image_that_would_pass_the_image_bytes_a_turn_may_replay(settings) -> None:
    settings.CHAT_MAX_PROMPT_IMAGE_BYTES = 5_000_000
    image = {"type": "image", "sha256": "ab" * 32, "media_type": "image/png", "detail": "low", "width": 4,
             "height": 4, "bytes": 3_000_000}
    older, newer = (stored_message("user", "Look", n, parts=[{"type": "text", "text": "Look"}, image]) for n in (1, 2))

    prompt = build_prompt(
        model=MODEL, max_tokens=100, system_prompt="", memory_facts=[], history_newest_first=[newer, older],
        image_urls_for=lambda hashes: {sha: "data:image/png;base64,AAAA" for sha in hashes}, **new("Again?"),
    )

    assert prompt.history_used == 1 and prompt.history_truncated
