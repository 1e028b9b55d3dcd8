"""The offline provider: the embedded default when no upstream is configured.

Like Django's console e-mail backend, it lets the server be tried and tested with nothing else
running. It is not a language model and never pretends to be one: it answers deterministically,
without any network, saying what it received, and names itself `offline` in the `model` field.
Its usage is counted with the same tokenizer as everything else.
"""

import asyncio
import re
from collections.abc import AsyncIterator

from chat import tokens
from chat.providers.base import Completion, CompletionRequest, StreamDelta

OFFLINE_MODEL_NAME = "offline"
# How much of the user's message the answer quotes back.
QUOTE_CHARS = 200
_WORD = re.compile(r"\S+\s*|\s+")


def offline_reply(request: CompletionRequest, *, prompt_tokens: int) -> str:
    """The deterministic answer to `request`: the same request always gets the same text."""
    user_message = next((m["content"] for m in reversed(request.messages) if m["role"] == "user"), "")
    quote = user_message[:QUOTE_CHARS] + ("…" if len(user_message) > QUOTE_CHARS else "")
    count = len(request.messages)
    return (
        f"[offline] No upstream model is configured, so LLM Server answered by itself. "
        f"It received {count} message{'' if count == 1 else 's'} ({prompt_tokens} prompt tokens) and your "
        f'last message was: "{quote}". Set OPENAI_BASE_URL and OPENAI_API_KEY to chat with a real model.'
    )


class OfflineProvider:
    name = "offline"

    def _answer(self, request: CompletionRequest) -> Completion:
        encoding = tokens.get_encoding(tokens.encoding_name_for_model(OFFLINE_MODEL_NAME))
        prompt_tokens = tokens.count_prompt_tokens(request.messages, model=OFFLINE_MODEL_NAME)
        reply_tokens = encoding.encode_ordinary(offline_reply(request, prompt_tokens=prompt_tokens))
        finish_reason = "stop"
        if len(reply_tokens) > request.max_tokens:
            # Honour max_tokens like a model would: cut the answer and say why it stopped.
            reply_tokens = reply_tokens[: request.max_tokens]
            finish_reason = "length"
        return Completion(
            text=encoding.decode(reply_tokens),
            model=OFFLINE_MODEL_NAME,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(reply_tokens),
            usage_estimated=False,
            finish_reason=finish_reason,
        )

    async def complete(self, request: CompletionRequest) -> Completion:
        return self._answer(request)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[StreamDelta | Completion]:
        completion = self._answer(request)
        for word in _WORD.findall(completion.text):
            yield StreamDelta(text=word, model=OFFLINE_MODEL_NAME)
            # Let other requests run between words, as a network stream would.
            await asyncio.sleep(0)
        yield completion
