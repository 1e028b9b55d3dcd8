"""The one small interface every upstream model provider implements."""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class CompletionRequest:
    """What one turn asks of the model. `messages` are plain OpenAI-format dicts."""

    model: str
    messages: list[dict[str, Any]]
    # None: none is sent (the model writes as much as it will, or as `max_completion_tokens` says).
    max_tokens: int | None
    temperature: float
    # Further parameters (top_p, stop, seed, tools, response_format, n, …), validated by the caller and
    # passed upstream as they are; the offline provider reads only tools and response_format.
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    """The model's answer and what it cost.

    `usage_estimated` is True when upstream reported no usage and the counts are our tokenizer's.
    """

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    usage_estimated: bool
    finish_reason: str | None
    # The tool calls of the answer, whole: [{"id", "type": "function", "function": {"name", "arguments"}}].
    tool_calls: tuple[dict[str, Any], ...] = ()
    # The first choice's logprobs, as upstream sent them (when asked for).
    logprobs: Any = None
    # The choices after the first (when `n` asked for several), as upstream sent them.
    more_choices: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class StreamDelta:
    """A piece of the answer as it is written, and the model writing it. `tool_calls`: pieces of
    tool calls, as OpenAI's chunks have them (by `index`; the id and name come first, the arguments
    in fragments); the final Completion has them whole."""

    text: str
    model: str
    tool_calls: tuple[dict[str, Any], ...] = ()
    logprobs: Any = None


class ChatProvider(Protocol):
    """An upstream model. Implementations raise `chat.exceptions.UpstreamError` subclasses."""

    name: str

    async def list_models(self) -> list[str] | None:
        """The models this upstream serves, as it says; None when it cannot say."""
        ...

    async def complete(self, request: CompletionRequest) -> Completion:
        """The whole answer at once."""
        ...

    def stream(self, request: CompletionRequest) -> AsyncIterator[StreamDelta | Completion]:
        """The answer piece by piece: `StreamDelta`s, then one final `Completion` with the usage."""
        ...
