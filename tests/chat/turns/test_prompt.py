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


def test_it_orders_persona_memory_history_then_the_new_message() -> None:
    history_newest_first = [stored("assistant", "Hi!"), stored("user", "Hello")]

    prompt = build_prompt(
        model=MODEL, max_tokens=100, system_prompt="Be kind.", memory_facts=["Name: Alice", "City: Seoul"],
        history_newest_first=history_newest_first, user_message="How are you?",
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
        history_newest_first=iter(history), user_message="Hi",
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
        history_newest_first=newest_first, user_message="Hi",
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
        history_newest_first=newest_first(), user_message="Hi",
    )

    assert len(consumed) == 4


def test_it_recounts_history_stored_under_another_encoding() -> None:
    text = "안녕하세요, 오늘 날씨가 좋네요!"
    stale = HistoryMessage(message_id=7, role="user", content=text, token_count=999_999, token_encoding="cl100k_base")

    prompt = build_prompt(
        model="gpt-4o", max_tokens=10, system_prompt="", memory_facts=[],
        history_newest_first=[stale], user_message="Hi",
    )

    assert prompt.history_used == 1
    assert prompt.prompt_tokens == tokens.count_prompt_tokens(prompt.messages, model="gpt-4o")


def test_it_refuses_when_the_new_message_alone_does_not_fit(settings) -> None:
    settings.LLM_CONTEXT_WINDOWS = {"small": 20}

    with pytest.raises(ContextTooLong) as raised:
        build_prompt(
            model="small", max_tokens=10, system_prompt="", memory_facts=[],
            history_newest_first=[], user_message="one two three four five",
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
