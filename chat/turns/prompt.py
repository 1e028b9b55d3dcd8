"""Building the prompt from stored history: the core rule of the server. Pure functions.

Order: system role (persona) -> pinned memory (one system message, "Memory:" then one fact per
line) -> stored history, the most recent messages that fit -> the new user message.

The budget is the model's context window minus `max_tokens` (the room the answer needs). The
persona, the memory and the new message are always sent; history fills what is left, newest
first, and stops at the first message that does not fit: a message is never split, and older
messages are never sent without the newer ones (that would make a gap in the conversation).
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.utils.translation import gettext as _

from chat import tokens
from chat.exceptions import ContextTooLong, MaxTokensTooLarge
from chat.sessions import content

# Context windows (tokens) of well-known models, matched by longest prefix. Operators add their
# own with LLM_CONTEXT_WINDOWS; anything unknown gets LLM_DEFAULT_CONTEXT_WINDOW.
KNOWN_CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-5": 400_000,
    "gpt-4.1": 1_047_576,
    "gpt-4o": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4-32k": 32_768,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "o1": 200_000,
    "o3": 200_000,
    "o4-mini": 200_000,
}


# The most each model writes in one answer (its `max_tokens` ceiling), the same way: operators
# add their own with LLM_MAX_OUTPUT_TOKENS; anything unknown gets LLM_DEFAULT_MAX_OUTPUT_TOKENS.
KNOWN_MAX_OUTPUT_TOKENS: dict[str, int] = {
    "gpt-5": 128_000,
    "gpt-4.1": 32_768,
    "gpt-4o": 16_384,
    "gpt-4-turbo": 4_096,
    "gpt-4-32k": 4_096,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 4_096,
    "o1": 100_000,
    "o3": 100_000,
    "o4-mini": 100_000,
}


def _by_longest_prefix(model: str, tables: tuple[dict[str, int], ...], default: int) -> int:
    for table in tables:
        matches = [prefix for prefix in table if model == prefix or model.startswith(prefix)]
        if matches:
            return table[max(matches, key=len)]
    return default


def context_window_for_model(model: str) -> int:
    """The context window of `model` in tokens: operator setting, then built-in table, then default."""
    return _by_longest_prefix(
        model, (settings.LLM_CONTEXT_WINDOWS, KNOWN_CONTEXT_WINDOWS), settings.LLM_DEFAULT_CONTEXT_WINDOW
    )


def max_output_tokens_for_model(model: str) -> int:
    """The largest `max_tokens` a turn may ask of `model`: operator setting, built-in table, default."""
    return _by_longest_prefix(
        model, (settings.LLM_MAX_OUTPUT_TOKENS, KNOWN_MAX_OUTPUT_TOKENS), settings.LLM_DEFAULT_MAX_OUTPUT_TOKENS
    )


def _window_for_the_answer(*, model: str, max_tokens: int) -> int:
    """The model's context window, once `max_tokens` is found within what the model writes."""
    ceiling = max_output_tokens_for_model(model)
    if max_tokens > ceiling:
        raise MaxTokensTooLarge(
            _("max_tokens=%(max_tokens)d is more than %(model)s writes in one answer (at most %(ceiling)d).")
            % {"max_tokens": max_tokens, "model": model, "ceiling": ceiling},
            details={"max_tokens": max_tokens, "max_output_tokens": ceiling, "model": model},
        )
    return context_window_for_model(model)


def _too_long(message: str, *, needed: int, model: str, window: int, max_tokens: int) -> ContextTooLong:
    """`message`: a sentence with the placeholders needed, model, window and max_tokens."""
    return ContextTooLong(
        message % {"needed": needed, "model": model, "window": window, "max_tokens": max_tokens},
        details={"needed_tokens": needed, "context_window": window, "max_tokens": max_tokens},
    )


@dataclass(slots=True)
class HistoryMessage:
    """A stored message as the prompt builder needs it (chat/sessions/content.py says what the
    fields beyond the text hold)."""

    message_id: int
    role: str
    content: str
    # Prompt tokens of this message in `token_encoding` (see Message.token_count).
    token_count: int
    token_encoding: str
    parts: list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str = ""
    name: str = ""

    @property
    def plain(self) -> bool:
        """A text message and nothing more: what every message was before tools and images."""
        return self.parts is None and self.tool_calls is None and not self.tool_call_id and not self.name

    def tokens_for(self, model: str) -> int:
        return content.message_tokens(
            role=self.role, content=self.content, model=model, parts=self.parts, tool_calls=self.tool_calls,
            tool_call_id=self.tool_call_id, name=self.name,
        )

    def upstream(self, image_urls: dict[str, str]) -> dict[str, Any]:
        if self.plain:
            return {"role": self.role, "content": self.content}
        return content.upstream_message(
            role=self.role, content=self.content, parts=self.parts, tool_calls=self.tool_calls,
            tool_call_id=self.tool_call_id, name=self.name, image_urls=image_urls,
        )

    @property
    def call_ids(self) -> set[str]:
        return {call["id"] for call in self.tool_calls or ()}


@dataclass(frozen=True)
class Prompt:
    """The messages to send upstream, and how they were chosen."""

    messages: list[dict[str, Any]]
    # Exact prompt tokens for OpenAI's encodings (our estimate for other models).
    prompt_tokens: int
    history_used: int
    history_truncated: bool
    warnings: list[str] = field(default_factory=list)
    # The new user message's own tokens (build_prompt), so that storing it need not count again.
    user_message_tokens: int = 0
    # (message id, tokens, encoding) of history counted again because it was stored under another
    # model's encoding: for the caller to store, so that the next turn need not count it again.
    recounted: list[tuple[int, int, str]] = field(default_factory=list)


def memory_message(memory_facts: list[str]) -> str:
    return "Memory:\n" + "\n".join(memory_facts)


def fixed_prompt(
    messages: list[dict[str, Any]], *, model: str, max_tokens: int, tools_tokens: int = 0
) -> Prompt:
    """The prompt of a turn that keeps no conversation: the caller's messages as they are, checked
    against the same budget as `build_prompt` (the model's window minus `max_tokens`).

    Raises MaxTokensTooLarge over the model's ceiling, ContextTooLong when the messages do not fit.
    """
    window = _window_for_the_answer(model=model, max_tokens=max_tokens)
    prompt_tokens = tokens.count_prompt_tokens(messages, model=model) + tools_tokens
    if prompt_tokens + max_tokens > window:
        raise _too_long(
            _(
                "The messages do not fit in the context window: they need %(needed)d tokens, but %(model)s "
                "has %(window)d tokens of which max_tokens=%(max_tokens)d are kept for the answer. Send fewer "
                "messages or lower max_tokens."
            ),
            needed=prompt_tokens, model=model, window=window, max_tokens=max_tokens,
        )
    return Prompt(messages=messages, prompt_tokens=prompt_tokens, history_used=0, history_truncated=False)


def _replayable_units(
    history_newest_first: Iterable[HistoryMessage],
) -> Iterator[HistoryMessage | list[HistoryMessage]]:
    """The history in the units it is replayed by, newest first: a message alone (yielded as it is,
    not in a list: the common case stays cheap), or an assistant's tool calls with the results that
    answer them (a list, in stored order), never one without the other. Tool results whose call is
    not in the history (it failed, or was cut short), and tool calls that were never answered (the
    client went on with a new message instead), are left out."""
    results: list[HistoryMessage] = []
    for message in history_newest_first:
        if message.plain and not results:
            yield message
            continue
        if message.role == "tool":
            results.append(message)
            continue
        if results:
            answered = {result.tool_call_id for result in results}
            if message.tool_calls and message.call_ids == answered:
                yield [message, *reversed(results)]
                results = []
                continue
            results = []
        if message.tool_calls:
            continue
        yield message


def build_prompt(
    *,
    model: str,
    max_tokens: int,
    system_prompt: str,
    memory_facts: list[str],
    history_newest_first: Iterable[HistoryMessage],
    new_messages: list[dict[str, Any]],
    instructions: str = "",
    new_messages_tokens: int,
    answered_calls: HistoryMessage | None = None,
    tools_tokens: int = 0,
    image_urls_for: Callable[[list[str]], dict[str, str]] = lambda hashes: {},
) -> Prompt:
    """Choose the messages for one turn. `history_newest_first` is consumed lazily, only as far
    as the budget reaches, so a session's length does not change a turn's cost.

    `new_messages`: the turn's own messages in OpenAI's format (the user's message, or the tool
    results answering `answered_calls`, the stored assistant message whose calls they answer, which
    is then always sent with them), and their tokens under `model`. `tools_tokens`: the tokens of
    the request's tool definitions. `image_urls_for`: the data URLs of stored images, by hash, for
    the images of the history chosen. `instructions`: a system message for this turn only, first.

    Raises MaxTokensTooLarge over the model's ceiling, ContextTooLong when the persona, memory and
    new messages alone exceed the budget.
    """
    window = _window_for_the_answer(model=model, max_tokens=max_tokens)
    encoding = tokens.encoding_name_for_model(model)
    budget = window - max_tokens

    head: list[dict[str, Any]] = []
    if instructions:
        head.append({"role": "system", "content": instructions})
    if system_prompt:
        head.append({"role": "system", "content": system_prompt})
    if memory_facts:
        head.append({"role": "system", "content": memory_message(memory_facts)})
    used = tokens.REPLY_PRIMING_TOKENS + tools_tokens + new_messages_tokens + sum(
        tokens.count_message_tokens(role=m["role"], content=m["content"], model=model) for m in head
    )
    recounted: list[tuple[int, int, str]] = []

    def size_of(message: HistoryMessage) -> int:
        if message.token_encoding == encoding:
            return message.token_count
        # Stored under another model's encoding: count again for this one.
        size = message.tokens_for(model)
        recounted.append((message.message_id, size, encoding))
        return size

    if answered_calls is not None:
        used += size_of(answered_calls)
    if used > budget:
        raise _too_long(
            _(
                "The message does not fit in the context window: the persona, memory and new message "
                "need %(needed)d tokens, but %(model)s has %(window)d tokens of which max_tokens=%(max_tokens)d "
                "are kept for the answer. Shorten the message or lower max_tokens."
            ),
            needed=used, model=model, window=window, max_tokens=max_tokens,
        )

    chosen: list[HistoryMessage] = []
    truncated = False
    # Images are budgeted by their bytes too: at low detail a large image costs few tokens, but it
    # is sent again, whole, on every turn that replays it.
    image_room = settings.CHAT_MAX_PROMPT_IMAGE_BYTES - content.stored_image_bytes(
        answered_calls.parts if answered_calls else None
    )
    has_images = False
    for unit in _replayable_units(history_newest_first):
        if unit.__class__ is HistoryMessage:
            # A plain message alone (nearly every one): the same work as before tools existed.
            size = unit.token_count if unit.token_encoding == encoding else size_of(unit)
            image_bytes = 0 if unit.parts is None else content.stored_image_bytes(unit.parts)
            if used + size > budget or image_bytes > image_room:
                truncated = True
                break
            used += size
            image_room -= image_bytes
            has_images = has_images or unit.parts is not None
            chosen.append(unit)
            continue
        size = sum(size_of(message) for message in unit)
        image_bytes = sum(content.stored_image_bytes(message.parts) for message in unit)
        if used + size > budget or image_bytes > image_room:
            truncated = True
            break
        used += size
        image_room -= image_bytes
        has_images = has_images or any(message.parts is not None for message in unit)
        chosen.extend(reversed(unit))
    chosen.reverse()
    if answered_calls is not None:
        chosen.append(answered_calls)
    image_urls: dict[str, str] = {}
    if has_images or (answered_calls is not None and answered_calls.parts is not None):
        hashes = [sha for message in chosen for sha in content.stored_image_hashes(message.parts)]
        image_urls = image_urls_for(hashes) if hashes else {}
    history = [
        {"role": message.role, "content": message.content} if message.plain else message.upstream(image_urls)
        for message in chosen
    ]
    return Prompt(
        messages=[*head, *history, *new_messages],
        prompt_tokens=used,
        history_used=len(chosen) - (answered_calls is not None),
        history_truncated=truncated,
        user_message_tokens=new_messages_tokens,
        recounted=recounted,
    )
