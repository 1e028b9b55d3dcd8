"""Reading an OpenAI-compatible upstream's stream of chat completion chunks, checked as it comes.

Upstreams answer a streamed request in more ways than OpenAI's own (vLLM, Ollama, llama.cpp,
proxies in front of them), and some of them wrong: a plain JSON body instead of events, chunks
without `choices`, `delta: null`, content as a list of parts, a stream that stops without a
`finish_reason` or `[DONE]`. Each is read here as what it is: a readable chunk is used, an answer
that cannot be read is `upstream_bad_response`, and a stream that stops before its end is an
interrupted answer, never a complete one. The chunks are read as plain JSON (no SDK model is
built for each one), with the SDK's own event decoder, timeouts and error classes.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai
from django.utils.translation import gettext_lazy as _

from chat.exceptions import UpstreamBadResponse, UpstreamError
from llmserver.http.parsers import storable

NOT_A_STREAM = _("The model provider answered a streamed request with something that is not a stream.")
UNREADABLE_CHUNK = _("The model provider sent a part of its streamed answer that could not be read.")


class RawChunks(openai.AsyncStream[dict[str, Any]]):
    """The SDK's stream of a response, yielding each event's JSON as it is, and saying whether the
    stream ended with OpenAI's `[DONE]`."""

    done = False

    async def __stream__(self) -> AsyncIterator[dict[str, Any]]:  # type: ignore[override]
        content_type = self.response.headers.get("content-type", "")
        if not content_type.startswith("text/event-stream"):
            raise UpstreamBadResponse(NOT_A_STREAM)
        async for event in self._iter_events():
            if self.done:
                # Read to the body's end, so that the connection is reused; nothing counts after it.
                continue
            if event.data.startswith("[DONE]"):
                self.done = True
                continue
            try:
                data = event.json()
            except ValueError:
                raise UpstreamBadResponse(UNREADABLE_CHUNK) from None
            if not isinstance(data, dict):
                raise UpstreamBadResponse(UNREADABLE_CHUNK)
            if "error" in data:
                # An error reported mid-stream (vLLM, LiteLLM: `{"error": {...}}`), often followed by
                # [DONE]: the answer is not whole. Its text stays out (it may quote a key).
                raise UpstreamError(details={"upstream_error": "in the stream"})
            yield data


@dataclass(frozen=True)
class ChunkContent:
    """What one chunk adds to the answer."""

    text: str
    model: Any
    usage: dict[str, Any] | None
    finish_reason: str | None
    # Pieces of tool calls, as the chunk has them (see ToolCallPieces).
    tool_calls: tuple[dict[str, Any], ...] = ()
    logprobs: Any = None


class ToolCallPieces:
    """The tool calls of a streamed answer, put together from their pieces: each piece names its
    call by `index`; the first piece of a call carries its id and name, the others fragments of
    its arguments."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, pieces: tuple[dict[str, Any], ...]) -> None:
        for piece in pieces:
            call = self._calls.setdefault(
                piece["index"], {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            )
            call["id"] = piece.get("id") or call["id"]
            function = piece.get("function") or {}
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""

    def whole(self) -> tuple[dict[str, Any], ...]:
        """The calls, in index order. Raises UpstreamBadResponse for a call without an id or name."""
        calls = tuple(self._calls[index] for index in sorted(self._calls))
        if any(not call["id"] or not call["function"]["name"] for call in calls):
            raise UpstreamBadResponse(UNREADABLE_CHUNK)
        # What a database column cannot hold (a NUL) is replaced, as in the answer's text.
        return tuple(
            {"id": storable(call["id"]), "type": "function", "function": {
                "name": storable(call["function"]["name"]), "arguments": storable(call["function"]["arguments"])}}
            for call in calls
        )


def _tool_call_pieces(pieces: Any) -> tuple[dict[str, Any], ...]:
    """A delta's `tool_calls`, checked to be pieces that can be put together."""
    if pieces is None:
        return ()
    if not isinstance(pieces, list):
        raise UpstreamBadResponse(UNREADABLE_CHUNK)
    for piece in pieces:
        function = piece.get("function") if isinstance(piece, dict) else None
        if (
            not isinstance(piece, dict)
            or not isinstance(piece.get("index"), int)
            or not isinstance(piece.get("id"), (str, type(None)))
            or not isinstance(function, (dict, type(None)))
            or any(not isinstance((function or {}).get(key), (str, type(None))) for key in ("name", "arguments"))
        ):
            raise UpstreamBadResponse(UNREADABLE_CHUNK)
    return tuple(pieces)


def _text_of(content: Any) -> str:
    """A delta's content: a string, or a list of text parts (joined), or nothing."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in content
    ):
        return "".join(part["text"] for part in content)
    raise UpstreamBadResponse(UNREADABLE_CHUNK)


def read_chunk(chunk: dict[str, Any]) -> ChunkContent:
    """The text, model, usage and finish reason of one chunk. A chunk may lack any of them (a
    usage chunk has no choices; a role chunk has no content). Raises UpstreamBadResponse for what
    is there but not readable."""
    choices = chunk.get("choices") or []
    usage = chunk.get("usage")
    if not isinstance(choices, list) or not isinstance(usage, (dict, type(None))):
        raise UpstreamBadResponse(UNREADABLE_CHUNK)
    texts: list[str] = []
    tool_calls: tuple[dict[str, Any], ...] = ()
    finish_reason = None
    logprobs = None
    for choice in choices:
        if not isinstance(choice, dict):
            raise UpstreamBadResponse(UNREADABLE_CHUNK)
        reason = choice.get("finish_reason")
        if not isinstance(reason, (str, type(None))):
            raise UpstreamBadResponse(UNREADABLE_CHUNK)
        finish_reason = reason or finish_reason
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise UpstreamBadResponse(UNREADABLE_CHUNK)
        texts.append(_text_of(delta.get("content")))
        tool_calls += _tool_call_pieces(delta.get("tool_calls"))
        logprobs = choice.get("logprobs") or logprobs
    return ChunkContent(
        text="".join(texts), model=chunk.get("model"), usage=usage, finish_reason=finish_reason,
        tool_calls=tool_calls, logprobs=logprobs,
    )
