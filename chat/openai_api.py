"""The OpenAI-compatible API: `POST /v1/chat/completions` and `GET /v1/models`, in OpenAI's wire format.

Apps written for OpenAI use this server by changing their base URL to `<server>/v1` and their key
to one of our client keys. The same keys, scopes, limits and usage accounting apply as on
`/api/v1/chat`; errors come in OpenAI's shape, so the SDKs raise their usual exceptions.

With the header `X-Session-Id` the server keeps the conversation: the client sends only its new
message, and the session's persona, memory and stored history are put before it. Without it the
call is stateless: the client's messages are sent as they are, and only the usage is recorded.
"""

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from adrf.views import APIView as AsyncAPIView
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http.response import HttpResponseBase
from django.utils.translation import gettext_lazy as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat import services, turns
from chat.providers import StreamDelta
from chat.serializers import (
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    session_id_validator,
)
from chat.services import DEFAULT_MAX_TOKENS, ChatTurnInput, StatelessTurnInput
from chat.sse import EventStreamRenderer, event_stream_response, sse_event
from chat.upstreams import upstream_choose
from llmserver.errors import InvalidInput, ModelNotFound, openai_exception_handler

SESSION_HEADER = "X-Session-Id"
# OpenAI's default temperature (our own API's default, 0.7, is the original design's).
OPENAI_DEFAULT_TEMPERATURE = 1.0
# `developer` is OpenAI's newer name for `system`.
SYSTEM_ROLES = ("system", "developer")
MESSAGE_ROLES = (*SYSTEM_ROLES, "user", "assistant")
# Sampling parameters passed upstream as they are.
PASSED_THROUGH = ("top_p", "stop", "presence_penalty", "frequency_penalty", "seed", "user")
MAX_STOP_SEQUENCES = 4


class OpenAIView(AsyncAPIView):
    renderer_classes = [*AsyncAPIView.renderer_classes, EventStreamRenderer]

    def get_exception_handler(self):  # type: ignore[no-untyped-def]
        return openai_exception_handler


class OpenAISyncView(APIView):
    def get_exception_handler(self):  # type: ignore[no-untyped-def]
        return openai_exception_handler


# --- Request ----------------------------------------------------------------------------------


@extend_schema_field({
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": list(MESSAGE_ROLES)},
        "content": {"oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "object", "properties": {
                "type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}},
        ]},
    },
})
class MessageField(serializers.Field):
    """One chat message: a role and its text, given as a string or as a list of text parts."""

    default_error_messages = {
        "invalid": _("Each message is an object with 'role' and 'content'."),
        "role": _("A message's role is one of: system, developer, user, assistant (tool calls are not supported)."),
        "content": _("A message's content is a string or a list of text parts; images and audio are not supported."),
        "long": _("A message may have at most %(limit)d characters."),
    }

    def to_internal_value(self, data: Any) -> dict[str, str]:
        if not isinstance(data, dict) or "role" not in data or "content" not in data:
            self.fail("invalid")
        role, content = data["role"], data["content"]
        if role not in MESSAGE_ROLES:
            self.fail("role")
        if isinstance(content, list):
            if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                       for part in content):
                self.fail("content")
            content = "".join(part["text"] for part in content)
        if not isinstance(content, str):
            self.fail("content")
        if len(content) > settings.CHAT_MAX_MESSAGE_CHARS:
            self.fail("long", limit=settings.CHAT_MAX_MESSAGE_CHARS)
        return {"role": "system" if role in SYSTEM_ROLES else role, "content": content}

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field({"oneOf": [
    {"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP_SEQUENCES},
]})
class StopField(serializers.Field):
    default_error_messages = {"invalid": _("stop is a string or a list of at most 4 strings.")}

    def to_internal_value(self, data: Any) -> str | list[str]:
        if isinstance(data, str):
            return data
        if isinstance(data, list) and len(data) <= MAX_STOP_SEQUENCES and all(isinstance(s, str) for s in data):
            return data
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = StrictBooleanField(required=False, default=False)


class ChatCompletionRequestSerializer(serializers.Serializer):
    """OpenAI's chat completion request, as far as this server supports it. Parameters it does not
    support (tools, n > 1, response_format, logprobs, …) are refused by name rather than ignored."""

    model = StrictCharField(required=False, allow_blank=True, default="", max_length=200)
    messages = serializers.ListField(child=MessageField(), min_length=1, max_length=settings.CHAT_MAX_HISTORY_IMPORT)
    max_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=1_000_000)
    max_completion_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=1_000_000)
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=2.0)
    stream = StrictBooleanField(required=False, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    n = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=1)
    top_p = StrictFloatField(required=False, min_value=0.0, max_value=1.0)
    stop = StopField(required=False)
    presence_penalty = StrictFloatField(required=False, min_value=-2.0, max_value=2.0)
    frequency_penalty = StrictFloatField(required=False, min_value=-2.0, max_value=2.0)
    seed = StrictIntegerField(required=False)
    user = StrictCharField(required=False, max_length=256)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        """Refuses unsupported parameters together with any other field's error, all named."""
        unsupported = {
            name: [_("This server does not support this parameter.")]
            for name in sorted(set(data) - set(self.fields) if isinstance(data, dict) else ())
        }
        try:
            values = super().to_internal_value(data)
        except serializers.ValidationError as error:
            if isinstance(error.detail, dict):
                raise serializers.ValidationError({**error.detail, **unsupported}) from None
            raise
        if unsupported:
            raise serializers.ValidationError(unsupported)
        return values


def _stateless_turn(data: dict[str, Any], *, max_tokens: int, temperature: float) -> StatelessTurnInput:
    return StatelessTurnInput(
        messages=data["messages"], model=data["model"], max_tokens=max_tokens, temperature=temperature,
        options=_passed_through(data),
    )


def _passed_through(data: dict[str, Any]) -> dict[str, Any]:
    return {name: data[name] for name in PASSED_THROUGH if name in data}


def _session_turn(data: dict[str, Any], *, session_id: str, max_tokens: int, temperature: float) -> ChatTurnInput:
    """The client's messages onto a stored session: its system messages set the persona (as
    `role` does on /api/v1/chat), its last message is the new turn, and anything between is
    earlier history, imported only into a session that has none."""
    messages = data["messages"]
    if messages[-1]["role"] != "user":
        raise InvalidInput(
            _("With X-Session-Id the last message must be the user's new message."),
            details={"messages": [_("The last message must have role 'user'.")]},
        )
    persona = "\n\n".join(m["content"] for m in messages[:-1] if m["role"] == "system")
    earlier = [(m["role"], m["content"]) for m in messages[:-1] if m["role"] != "system"]
    if not messages[-1]["content"].strip():
        raise InvalidInput(details={"messages": [_("user message cannot be empty")]})
    return ChatTurnInput(
        user_message=messages[-1]["content"],
        session_id=session_id,
        system_prompt=persona,
        model=data["model"],
        max_tokens=max_tokens,
        temperature=temperature,
        conversation_history=earlier,
        options=_passed_through(data),
    )


def _session_id(request: Request) -> str:
    session_id = request.headers.get(SESSION_HEADER, "")
    if session_id:
        try:
            session_id_validator(session_id)
        except DjangoValidationError as error:
            raise InvalidInput(details={SESSION_HEADER: list(error.messages)}) from None
    return session_id


# --- Response ---------------------------------------------------------------------------------


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def _usage(result: turns.ChatTurnResult) -> dict[str, int]:
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


def chat_completion(result: turns.ChatTurnResult) -> dict[str, Any]:
    body = _completion(
        kind="chat.completion",
        model=result.model,
        choices=[
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.response_text, "refusal": None},
                "logprobs": None,
                "finish_reason": result.finish_reason or "stop",
            }
        ],
        usage=_usage(result),
    )
    if result.warnings:
        body["warnings"] = result.warnings
    return body


def _session_headers(result: turns.ChatTurnResult | None, session_id: str) -> dict[str, str]:
    headers = {SESSION_HEADER: session_id} if session_id else {}
    if result is not None and result.message_id is not None:
        headers["X-Message-Id"] = str(result.message_id)
    return headers


async def _completion_chunks(
    first: StreamDelta | turns.ChatTurnResult,
    pieces: AsyncIterator[StreamDelta | turns.ChatTurnResult],
    *, include_usage: bool,
) -> AsyncIterator[bytes]:
    """The turn as OpenAI's `chat.completion.chunk` events, then `[DONE]`; a failure after the
    stream started is an `{"error": ...}` event, which the SDKs raise as APIError."""
    completion_id, created = _completion_id(), int(time.time())

    def chunk(model: str, **fields: Any) -> bytes:
        return sse_event(_completion(
            kind="chat.completion.chunk", model=model, completion_id=completion_id, created=created, **fields
        ))

    def delta_chunk(model: str, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return chunk(model, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

    piece = first
    try:
        yield delta_chunk(piece.model, {"role": "assistant", "content": ""})
        while isinstance(piece, StreamDelta):
            yield delta_chunk(piece.model, {"content": piece.text})
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


_OPENAI_ERROR = OpenApiResponse(
    inline_serializer("OpenAIError", fields={"error": inline_serializer("OpenAIErrorBody", fields={
        "message": serializers.CharField(),
        "type": serializers.CharField(),
        "param": serializers.CharField(allow_null=True),
        "code": serializers.CharField(),
        "details": serializers.DictField(),
    })}),
    description="OpenAI's error shape; `code` is this server's stable error code.",
)


class ChatCompletionsView(OpenAIView):
    @extend_schema(
        operation_id="openai_chat_completions",
        summary="OpenAI-compatible chat completion; with X-Session-Id the server keeps the conversation.",
        tags=["openai"],
        parameters=[OpenApiParameter(
            SESSION_HEADER, location=OpenApiParameter.HEADER, required=False,
            description="Keep the conversation in this session (created on first use): send only the new message.",
        )],
        request=ChatCompletionRequestSerializer,
        responses={
            (200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT, description="A chat.completion object."),
            (200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, description="chat.completion.chunk events."),
            **{code: _OPENAI_ERROR for code in (400, 401, 403, 409, 413, 429, 502, 503, 504)},
        },
    )
    async def post(self, request: Request) -> HttpResponseBase:
        serializer = ChatCompletionRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        session_id = _session_id(request)
        max_tokens = data.get("max_completion_tokens") or data.get("max_tokens") or DEFAULT_MAX_TOKENS
        temperature = data.get("temperature")
        temperature = OPENAI_DEFAULT_TEMPERATURE if temperature is None else temperature
        if session_id:
            turn: ChatTurnInput | StatelessTurnInput = _session_turn(
                data, session_id=session_id, max_tokens=max_tokens, temperature=temperature
            )
        else:
            turn = _stateless_turn(data, max_tokens=max_tokens, temperature=temperature)
        upstream = await upstream_choose(api_key=request.auth, user_key="", free_mode=False)
        if not data["stream"]:
            result = await turns.chat_turn_run(api_key=request.auth, upstream=upstream, turn=turn)
            return Response(chat_completion(result), headers=_session_headers(result, session_id))
        pieces = turns.chat_turn_stream(api_key=request.auth, upstream=upstream, turn=turn)
        first = await anext(pieces)
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        return event_stream_response(
            _completion_chunks(first, pieces, include_usage=include_usage),
            headers=_session_headers(None, session_id),
        )


# --- Models -------------------------------------------------------------------------------------


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "llm-server"}


class OpenAIModelSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    owned_by = serializers.CharField()


class ModelListView(OpenAISyncView):
    @extend_schema(
        operation_id="openai_models_list",
        summary="The models this key can use (OpenAI-compatible).",
        tags=["openai"],
        responses={
            200: inline_serializer("OpenAIModelList", fields={"object": serializers.CharField(),
                                                              "data": OpenAIModelSerializer(many=True)}),
            **{code: _OPENAI_ERROR for code in (401, 403)},
        },
    )
    def get(self, request: Request) -> Response:
        return Response({"object": "list", "data": [_model_object(name) for name in services.models_usable_by(request.auth)]})


class ModelDetailView(OpenAISyncView):
    @extend_schema(
        operation_id="openai_models_retrieve",
        summary="One model this key can use (OpenAI-compatible).",
        tags=["openai"],
        responses={200: OpenAIModelSerializer, **{code: _OPENAI_ERROR for code in (401, 403, 404)}},
    )
    def get(self, request: Request, model: str) -> Response:
        if model not in services.models_usable_by(request.auth):
            raise ModelNotFound(
                _("The model %(model)s does not exist or this key may not use it.") % {"model": model},
                details={"model": model},
            )
        return Response(_model_object(model))
