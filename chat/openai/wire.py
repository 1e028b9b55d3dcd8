"""OpenAI's wire format of the answers: a `chat.completion`, its `chat.completion.chunk` stream,
a model object, and the error shape as the schema documents it."""

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers

from chat.providers import StreamDelta
from chat.turns import run
from llmserver.http.handlers import openai_exception_handler
from llmserver.http.sse import sse_event


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def _usage(result: run.ChatTurnResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.total_tokens_used,
    }


def _completion(*, kind: str, model: str, completion_id: str = "", created: int = 0, **fields: Any) -> dict[str, Any]:
    """OpenAI's envelope of a `chat.completion` or of one `chat.completion.chunk`."""
    return {
        "id": completion_id or _completion_id(), "object": kind, "created": created or int(time.time()),
        "model": model, **fields,
    }


def chat_completion(result: run.ChatTurnResult) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": result.response_text, "refusal": None}
    if result.tool_calls:
        message["tool_calls"] = result.tool_calls
        message["content"] = result.response_text or None
    body = _completion(
        kind="chat.completion",
        model=result.model,
        choices=[
            {
                "index": 0,
                "message": message,
                "logprobs": result.logprobs,
                "finish_reason": result.finish_reason or "stop",
            },
            # More answers (stateless, n > 1), as upstream wrote them.
            *result.more_choices,
        ],
        usage=_usage(result),
    )
    if result.warnings:
        body["warnings"] = result.warnings
    return body


async def completion_chunks(
    first: StreamDelta | run.ChatTurnResult,
    pieces: AsyncIterator[StreamDelta | run.ChatTurnResult],
    *, include_usage: bool,
) -> AsyncIterator[bytes]:
    """The turn as OpenAI's `chat.completion.chunk` events, then `[DONE]`; a failure after the
    stream started is an `{"error": ...}` event, which the SDKs raise as APIError."""
    completion_id, created = _completion_id(), int(time.time())

    def chunk(model: str, **fields: Any) -> bytes:
        return sse_event(_completion(
            kind="chat.completion.chunk", model=model, completion_id=completion_id, created=created, **fields
        ))

    def delta_chunk(
        model: str, delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None
    ) -> bytes:
        return chunk(model, choices=[
            {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        ])

    piece = first
    try:
        yield delta_chunk(piece.model, {"role": "assistant", "content": ""})
        while isinstance(piece, StreamDelta):
            delta: dict[str, Any] = {"content": piece.text} if piece.text or not piece.tool_calls else {}
            if piece.tool_calls:
                # Passed on as they arrive: the SDKs put the calls together from their pieces.
                delta["tool_calls"] = list(piece.tool_calls)
            yield delta_chunk(piece.model, delta, logprobs=piece.logprobs)
            piece = await anext(pieces)
        yield delta_chunk(piece.model, {}, piece.finish_reason or "stop")
        if include_usage:
            yield chunk(piece.model, choices=[], usage=_usage(piece))
        yield sse_event("[DONE]")
    except Exception as exc:
        # The same mapping (and logging of bugs) as an error before the stream started.
        yield sse_event(openai_exception_handler(exc, {"where": "a streamed chat completion"}).data)
    finally:
        await pieces.aclose()


def model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "llm-server"}


OPENAI_ERROR = OpenApiResponse(
    inline_serializer("OpenAIError", fields={"error": inline_serializer("OpenAIErrorBody", fields={
        "message": serializers.CharField(),
        "type": serializers.CharField(),
        "param": serializers.CharField(allow_null=True),
        "code": serializers.CharField(),
        "details": serializers.DictField(),
    })}),
    description="OpenAI's error shape; `code` is this server's stable error code.",
)
