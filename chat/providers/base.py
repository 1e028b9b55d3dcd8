"""The one small interface every upstream model provider implements."""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class CompletionRequest:
    """What one turn asks of the model. `messages` are plain OpenAI-format dicts."""

    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    # Further sampling parameters (top_p, stop, seed, …), validated by the caller and passed upstream as
    # they are; the offline provider ignores them.
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


@dataclass(frozen=True)
class StreamDelta:
    """A piece of the answer as it is written, and the model writing it."""

    text: str
    model: str


class ChatProvider(Protocol):
    """An upstream model. Implementations raise `chat.exceptions.UpstreamError` subclasses."""

    name: str

    async def complete(self, request: CompletionRequest) -> Completion:
        """The whole answer at once."""
        ...

    def stream(self, request: CompletionRequest) -> AsyncIterator[StreamDelta | Completion]:
        """The answer piece by piece: `StreamDelta`s, then one final `Completion` with the usage."""
        ...
