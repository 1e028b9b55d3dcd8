"""The OpenAI-compatible API: `POST /v1/chat/completions` and `GET /v1/models`, in OpenAI's wire format.

Apps written for OpenAI use this server by changing their base URL to `<server>/v1` and their key
to one of our client keys. The same keys, scopes, limits and usage accounting apply as on
`/api/v1/chat`; errors come in OpenAI's shape, so the SDKs raise their usual exceptions.

With the header `X-Session-Id` the server keeps the conversation: the client sends only its new
message, and the session's persona, memory and stored history are put before it. Without it the
call is stateless: the client's messages are sent as they are, and only the usage is recorded.
"""

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http.response import HttpResponseBase
from django.utils.translation import gettext_lazy as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from chat.exceptions import ModelNotFound
from chat.openai.serializers import ChatCompletionRequestSerializer, OpenAIModelSerializer
from chat.openai.wire import OPENAI_ERROR, chat_completion, completion_chunks, model_object
from chat.sessions.ids import session_id_validator
from chat.turns import run
from chat.turns.inputs import ChatTurnInput, NewMessage, StatelessTurnInput, resent_conversation
from chat.upstreams.choice import upstream_choose
from chat.upstreams.selectors import models_usable_by
from llmserver.http.errors import InvalidInput
from llmserver.http.handlers import openai_exception_handler
from llmserver.http.sse import EventStreamRenderer, event_stream_response, json_unless_streaming
from llmserver.http.views import AsyncApiView

SESSION_HEADER = "X-Session-Id"
# OpenAI's default temperature (our own API's default, 0.7, is the original design's).
OPENAI_DEFAULT_TEMPERATURE = 1.0
# Parameters passed upstream as they are (when given, and not null).
PASSED_THROUGH = (
    "top_p", "stop", "presence_penalty", "frequency_penalty", "seed", "user", "tools", "tool_choice",
    "parallel_tool_calls", "response_format", "logprobs", "top_logprobs", "logit_bias", "n", "store", "metadata",
    "reasoning_effort", "service_tier", "verbosity", "prompt_cache_key", "safety_identifier", "max_completion_tokens",
)


class OpenAIView(AsyncApiView):
    renderer_classes = [*AsyncApiView.renderer_classes, EventStreamRenderer]

    def get_exception_handler(self):  # type: ignore[no-untyped-def]
        return openai_exception_handler


def _stateless_turn(data: dict[str, Any], *, max_tokens: int | None, temperature: float) -> StatelessTurnInput:
    return StatelessTurnInput(
        messages=[message.upstream() for message in data["messages"]], model=data["model"], max_tokens=max_tokens,
        temperature=temperature, options=_passed_through(data),
    )


def _passed_through(data: dict[str, Any]) -> dict[str, Any]:
    return {name: data[name] for name in PASSED_THROUGH if data.get(name) is not None}


def _session_turn(
    data: dict[str, Any], *, session_id: str, max_tokens: int | None, temperature: float
) -> ChatTurnInput:
    """The client's messages onto a stored session: its system messages set the persona (as
    `role` does on /api/v1/chat); what comes after the last assistant message is the new turn (a
    user's message, the results of the stored answer's tool calls, or those results and then a
    user's message); anything before it is earlier history, imported only into a session that has
    none."""
    messages: list[NewMessage] = data["messages"]
    if (data.get("n") or 1) > 1:
        raise InvalidInput(
            _("With X-Session-Id a turn has one answer: n must be 1 (the session keeps one conversation)."),
            details={"n": [_("n must be 1 with X-Session-Id.")]},
        )
    resent = resent_conversation(messages)
    user = resent.user
    if resent.empty:
        raise InvalidInput(
            _("With X-Session-Id the last message must be the user's new message, or the results of the tool calls."),
            details={"messages": [_("The last message must have role 'user' or 'tool'.")]},
        )
    if user is not None and not user.content.strip() and not user.images:
        raise InvalidInput(details={"messages": [_("user message cannot be empty")]})
    return ChatTurnInput(
        user_message=user.content if user else "",
        user_parts=user.parts if user else None,
        user_name=user.name if user else "",
        tool_results=resent.results,
        session_id=session_id,
        system_prompt=resent.persona,
        model=data["model"],
        max_tokens=max_tokens,
        temperature=temperature,
        conversation_history=list(resent.earlier),
        history_resent=True,
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


def _session_headers(result: run.ChatTurnResult | None, session_id: str) -> dict[str, str]:
    headers = {SESSION_HEADER: session_id} if session_id else {}
    if result is not None and result.message_id is not None:
        headers["X-Message-Id"] = str(result.message_id)
    return headers


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
            # 404, 422: upstream's refusal of the request, passed on as it was.
            **{code: OPENAI_ERROR for code in (400, 401, 403, 404, 409, 411, 413, 422, 429, 502, 503, 504)},
        },
    )
    async def post(self, request: Request) -> HttpResponseBase:
        json_unless_streaming(request)
        serializer = ChatCompletionRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        session_id = _session_id(request)
        # max_completion_tokens goes upstream as it is (OpenAI's reasoning models refuse max_tokens);
        # with neither, none is sent, and the model writes what it will.
        max_tokens = data.get("max_completion_tokens") or data.get("max_tokens")
        if data.get("stream") and (data.get("n") or 1) > 1:
            raise InvalidInput(
                _("n greater than 1 is answered without streaming only."), details={"n": [_("Use n=1 to stream.")]}
            )
        temperature = data.get("temperature")
        temperature = OPENAI_DEFAULT_TEMPERATURE if temperature is None else temperature
        if session_id:
            turn: ChatTurnInput | StatelessTurnInput = _session_turn(
                data, session_id=session_id, max_tokens=max_tokens, temperature=temperature
            )
        else:
            turn = _stateless_turn(data, max_tokens=max_tokens, temperature=temperature)
        upstream = upstream_choose(api_key=request.auth, user_key="", free_mode=False)
        if not data["stream"]:
            result = await run.chat_turn_run(api_key=request.auth, upstream=upstream, turn=turn)
            return Response(chat_completion(result), headers=_session_headers(result, session_id))
        pieces = run.chat_turn_stream(api_key=request.auth, upstream=upstream, turn=turn)
        first = await anext(pieces)
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        return event_stream_response(
            completion_chunks(first, pieces, include_usage=include_usage),
            headers=_session_headers(None, session_id),
        )


async def _models_of(request: Request) -> list[str]:
    """What the key may use; for a key the server does not restrict, what its upstream serves."""
    upstream = upstream_choose(api_key=request.auth, user_key="", free_mode=False)
    return models_usable_by(request.auth, upstream_models=await upstream.provider.list_models())


class ModelListView(OpenAIView):
    @extend_schema(
        operation_id="openai_models_list",
        summary="The models this key can use (OpenAI-compatible).",
        tags=["openai"],
        responses={
            200: inline_serializer("OpenAIModelList", fields={"object": serializers.CharField(),
                                                              "data": OpenAIModelSerializer(many=True)}),
            **{code: OPENAI_ERROR for code in (401, 403)},
        },
    )
    async def get(self, request: Request) -> Response:
        return Response({"object": "list", "data": [model_object(name) for name in await _models_of(request)]})


class ModelDetailView(OpenAIView):
    @extend_schema(
        operation_id="openai_models_retrieve",
        summary="One model this key can use (OpenAI-compatible).",
        tags=["openai"],
        responses={200: OpenAIModelSerializer, **{code: OPENAI_ERROR for code in (401, 403, 404)}},
    )
    async def get(self, request: Request, model: str) -> Response:
        if model not in await _models_of(request):
            raise ModelNotFound(
                _("The model %(model)s does not exist or this key may not use it.") % {"model": model},
                details={"model": model},
            )
        return Response(model_object(model))
