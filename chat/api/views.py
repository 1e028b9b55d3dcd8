"""HTTP only: validate with a serializer, call one service or selector, shape the output.

The chat view is async (adrf): it waits on upstream for seconds and must not hold a thread while it
does. The session views are quick database reads and writes, so they stay sync.
"""

import dataclasses
from collections.abc import AsyncIterator

from django.db.models import QuerySet
from django.http import HttpResponse
from django.http.response import HttpResponseBase
from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from chat.api import idempotency
from chat.api.schema import error_responses, paged_list
from chat.api.serializers import (
    UPSTREAM_KEY_HEADER,
    ApiKeySerializer,
    ChatRequestSerializer,
    ChatResponseSerializer,
    MessageSerializer,
    SessionCreateSerializer,
    SessionSerializer,
    SessionUpdateSerializer,
    UsageQuerySerializer,
    UsageRecordSerializer,
    UsageReportSerializer,
)
from chat.exceptions import ScopeMissing, UpstreamError
from chat.keys.selectors import api_key_get, api_key_list
from chat.models import ApiKey
from chat.providers import StreamDelta
from chat.sessions import selectors as session_selectors
from chat.sessions import services as session_services
from chat.sessions.images import image_get
from chat.turns import run
from chat.turns.inputs import ChatTurnInput, NewMessage
from chat.upstreams.choice import upstream_choose
from chat.usage import selectors as usage_selectors
from llmserver.http.handlers import api_exception_handler
from llmserver.http.pagination import ApiPagination
from llmserver.http.sse import EventStreamRenderer, event_stream_response, json_unless_streaming, sse_event
from llmserver.http.views import AsyncApiView


# (Comments, not a docstring: drf-spectacular would publish a docstring as every list's description.)
# `GET`: one page of `items()` (count, next, previous, results), each item shaped by
# `item_serializer`. A subclass says what the items are; `paged_list` documents it.
class PagedListView(APIView):

    item_serializer: type[serializers.Serializer]

    def items(self, request: Request, **kwargs: str) -> QuerySet:
        raise NotImplementedError

    def get(self, request: Request, **kwargs: str) -> Response:
        paginator = ApiPagination()
        page = paginator.paginate_queryset(self.items(request, **kwargs), request, view=self)
        return paginator.get_paginated_response(self.item_serializer(page, many=True).data)


class ChatView(AsyncApiView):
    renderer_classes = [*api_settings.DEFAULT_RENDERER_CLASSES, EventStreamRenderer]

    @extend_schema(
        operation_id="chat",
        summary="Send one message; the server builds the prompt from the stored session.",
        description=(
            "With `stream: true` the answer comes as server-sent events: `delta` events "
            '(`{"delta": "..."}`), then one `done` event carrying this JSON response, or one `error` '
            "event in the error shape if the turn fails after the stream started (the partial answer "
            "is then stored, marked incomplete). Failures before the first delta are ordinary error "
            "responses with their status codes.\n\n"
            "With an `Idempotency-Key` header, sending the same request again (same key, same body) "
            "replays the stored response with `Idempotent-Replayed: true` instead of running a second "
            "turn; the same key with another body is refused with 422. Keys are kept for 24 hours."
        ),
        parameters=[
            OpenApiParameter(
                idempotency.IDEMPOTENCY_KEY_HEADER, OpenApiTypes.STR, OpenApiParameter.HEADER,
                description="1 to 255 printable ASCII characters, unique per request (a UUID, say).",
                pattern=f"^[ -~]{{1,{idempotency.MAX_KEY_LENGTH}}}$",
            ),
        ],
        request=ChatRequestSerializer,
        responses={
            (200, "application/json"): ChatResponseSerializer,
            (200, "text/event-stream"): OpenApiResponse(
                OpenApiTypes.STR, description="With stream: true, server-sent events."
            ),
            **error_responses(400, 401, 403, 409, 413, 422, 429, 502, 503, 504),
        },
    )
    async def post(self, request: Request) -> HttpResponseBase:
        json_unless_streaming(request)
        idempotency_key = idempotency.idempotency_key_from(request.headers)
        serializer = ChatRequestSerializer(
            data=request.data, context={"upstream_key_header": request.headers.get(UPSTREAM_KEY_HEADER, "")}
        )
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        claim = None
        if idempotency_key is not None:
            claim = await idempotency.idempotency_begin(
                api_key=request.auth, key=idempotency_key,
                # What the request asks, not how it was written: properties the contract does not
                # have are ignored by the turn, so they do not make another request either.
                body_hash=idempotency.request_hash({
                    name: value for name, value in request.data.items() if name in serializer.fields
                }),
            )
            if isinstance(claim, idempotency.StoredResponse):
                return _replayed(claim, stream=data["stream"])
        async with idempotency.ended_if_failed(claim, stored=_kept_failure):
            upstream = upstream_choose(
                api_key=request.auth, user_key=data["upstream_key"], free_mode=data["free_mode"]
            )
            turn = _chat_turn(data)
            if not data["stream"]:
                result = await run.chat_turn_run(api_key=request.auth, upstream=upstream, turn=turn)
            else:
                pieces = run.chat_turn_stream(api_key=request.auth, upstream=upstream, turn=turn)
                # Up to the first piece, a failure is an ordinary error response with its status code.
                first = await anext(pieces)
        if data["stream"]:
            return event_stream_response(_chat_events(first, pieces, claim))
        body = _chat_response(result)
        await idempotency.idempotency_end(claim=claim, response=idempotency.StoredResponse(status=200, body=body))
        return Response(body)


def _chat_turn(data: dict) -> ChatTurnInput:
    user_message = data.get("user_message", "")
    return ChatTurnInput(
        user_message=user_message,
        # With images, the message is its text then its images.
        user_parts=(user_message, *data["images"]) if data["images"] else None,
        tool_results=tuple(
            NewMessage(role="tool", content=result["content"], tool_call_id=result["tool_call_id"])
            for result in data["tool_results"]
        ),
        session_id=data["session_id"],
        system_prompt=data["role"],
        model=data["model"],
        max_tokens=data["max_tokens"],
        temperature=data["temperature"],
        memory_context=data["memory_context"],
        conversation_history=data["conversation_history"],
        options={name: data[name] for name in ("tools", "tool_choice", "response_format") if data.get(name)},
    )


# What the OpenAI-compatible API alone answers with.
_NOT_IN_CHAT_RESPONSE = ("logprobs", "more_choices")


def _chat_response(result: run.ChatTurnResult) -> dict:
    """The JSON response (ChatResponseSerializer documents it). Built directly: the result is
    already plain data, and running it through the serializer cost 0.3 ms a turn."""
    body = {"success": True, **dataclasses.asdict(result), "error_message": None}
    for name in _NOT_IN_CHAT_RESPONSE:
        del body[name]
    return body


def _kept_failure(exc: BaseException, response: Response | None = None) -> idempotency.StoredResponse | None:
    """What an Idempotency-Key keeps of a failed turn (`response`: its error response, when made
    already): the model's failure, or nothing, which frees the key (see UpstreamError.model_answered)."""
    if not (isinstance(exc, UpstreamError) and exc.model_answered):
        return None
    response = response or api_exception_handler(exc, {"where": "a chat"})
    return idempotency.StoredResponse(status=response.status_code, body=response.data)


def _replayed(stored: idempotency.StoredResponse, *, stream: bool) -> HttpResponseBase:
    """The stored response again. A streamed answer comes back as one `delta` with the whole text."""
    headers = {idempotency.REPLAYED_HEADER: "true"}
    if not stream or stored.status != 200:
        return Response(stored.body, status=stored.status, headers=headers)

    async def events() -> AsyncIterator[bytes]:
        if stored.body["response_text"]:  # an answer of tool calls only has no text to send
            yield sse_event({"delta": stored.body["response_text"]}, event="delta")
        yield sse_event(stored.body, event="done")

    return event_stream_response(events(), headers=headers)


async def _chat_events(
    first: StreamDelta | run.ChatTurnResult, pieces: AsyncIterator[StreamDelta | run.ChatTurnResult],
    claim: idempotency.Claim | None,
) -> AsyncIterator[bytes]:
    """The turn as server-sent events: `delta`s, then `done` (the JSON response) or `error`."""
    piece = first
    stored = None
    try:
        while isinstance(piece, StreamDelta):
            # Pieces of tool calls are not sent: the `done` event has the calls whole.
            if piece.text:
                yield sse_event({"delta": piece.text}, event="delta")
            piece = await anext(pieces)
        body = _chat_response(piece)
        stored = idempotency.StoredResponse(status=200, body=body)
        yield sse_event(body, event="done")
    except Exception as exc:
        # The same mapping (and logging of bugs) as an error before the stream started.
        error = api_exception_handler(exc, {"where": "a streamed chat"})
        stored = _kept_failure(exc, error)
        yield sse_event(error.data, event="error")
    finally:
        # Ends the turn now if the client went away mid-stream (stores what was generated).
        await pieces.aclose()
        await idempotency.idempotency_end(claim=claim, response=stored)


@paged_list(operation_id="sessions_list", summary="Your sessions, newest first.", page_name="SessionPage")
class SessionListView(PagedListView):
    item_serializer = SessionSerializer

    def items(self, request: Request) -> QuerySet:
        return session_selectors.session_list(api_key=request.auth)

    @extend_schema(
        operation_id="sessions_create",
        summary="Start a session, optionally with your own id, persona and memory.",
        request=SessionCreateSerializer,
        responses={201: SessionSerializer, **error_responses(400, 401, 409, 413)},
    )
    def post(self, request: Request) -> Response:
        serializer = SessionCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        session = session_services.session_create(
            api_key=request.auth,
            public_id=data["session_id"],
            title=data["title"],
            system_prompt=data["role"],
            model=data["model"],
            memory_facts=data["memory_context"],
        )
        return Response(SessionSerializer(session).data, status=status.HTTP_201_CREATED)


class SessionDetailView(APIView):
    @extend_schema(operation_id="sessions_retrieve", responses={200: SessionSerializer, **error_responses(401, 404)})
    def get(self, request: Request, session_id: str) -> Response:
        session = session_selectors.session_get(api_key=request.auth, public_id=session_id)
        return Response(SessionSerializer(session).data)

    @extend_schema(
        operation_id="sessions_update",
        summary="Change the title, persona, model or memory (memory_context replaces the stored facts).",
        request=SessionUpdateSerializer,
        responses={200: SessionSerializer, **error_responses(400, 401, 404, 413)},
    )
    def patch(self, request: Request, session_id: str) -> Response:
        session = session_selectors.session_get(api_key=request.auth, public_id=session_id)
        serializer = SessionUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        renamed = {"role": "system_prompt", "memory_context": "memory_facts"}
        changes = {renamed.get(name, name): value for name, value in serializer.validated_data.items()}
        session = session_services.session_update(session=session, changes=changes)
        return Response(SessionSerializer(session).data)

    @extend_schema(
        operation_id="sessions_destroy",
        summary="Delete the session and its messages (its usage records are kept).",
        responses={204: None, **error_responses(401, 404)},
    )
    def delete(self, request: Request, session_id: str) -> Response:
        session = session_selectors.session_get(api_key=request.auth, public_id=session_id)
        session_services.session_delete(session=session)
        return Response(status=status.HTTP_204_NO_CONTENT)


@paged_list(
    operation_id="sessions_messages_list", summary="The session's messages, oldest first.", page_name="MessagePage"
)
class SessionMessagesView(PagedListView):
    item_serializer = MessageSerializer

    def items(self, request: Request, session_id: str) -> QuerySet:
        session = session_selectors.session_get(api_key=request.auth, public_id=session_id)
        return session_selectors.message_list(session=session)


class ImageView(APIView):
    @extend_schema(
        operation_id="images_retrieve",
        summary="An image sent in one of your messages, by the hash its message's parts name.",
        responses={(200, "image/*"): OpenApiResponse(OpenApiTypes.BINARY), **error_responses(401, 404)},
    )
    def get(self, request: Request, sha256: str) -> HttpResponse:
        image = image_get(api_key=request.auth, sha256=sha256)
        response = HttpResponse(bytes(image.data), content_type=image.media_type)
        # The same hash is always the same image.
        response["Cache-Control"] = "private, max-age=31536000, immutable"
        response["X-Content-Type-Options"] = "nosniff"
        return response


@paged_list(
    operation_id="sessions_usage_list", summary="The session's upstream calls and their tokens, oldest first.",
    page_name="UsagePage", errors=(400, 401, 403, 404),
)
class SessionUsageView(PagedListView):
    item_serializer = UsageRecordSerializer

    def items(self, request: Request, session_id: str) -> QuerySet:
        session = session_selectors.session_get(api_key=request.auth, public_id=session_id)
        return usage_selectors.usage_list_for_session(session=session)


@paged_list(
    operation_id="keys_list", summary="All client keys, newest first (admin scope).", page_name="ApiKeyPage",
    errors=(400, 401, 403, 404),
)
class ApiKeyListView(PagedListView):
    """Key management over the API, for `admin` keys: the list (never a secret)."""

    required_scopes = frozenset({ApiKey.Scope.ADMIN})
    item_serializer = ApiKeySerializer

    def items(self, request: Request) -> QuerySet:
        return api_key_list()


class UsageView(APIView):
    """The calling key's usage; an `admin` key sees every key's and may pick one with `key`."""

    required_scopes = frozenset({ApiKey.Scope.CHAT, ApiKey.Scope.READ, ApiKey.Scope.ADMIN})

    @extend_schema(
        operation_id="usage",
        summary="Requests, tokens and cost over a period, by day, model or key (from daily roll-ups).",
        parameters=[UsageQuerySerializer],
        responses={200: UsageReportSerializer, **error_responses(400, 401, 403, 404)},
    )
    def get(self, request: Request) -> Response:
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        api_key = request.auth
        is_admin = ApiKey.Scope.ADMIN in api_key.scopes
        if "key" in params and params["key"] != api_key.key_id and not is_admin:
            raise ScopeMissing(
                _("Only an admin key may see another key's usage."), details={"required_scopes": ["admin"]}
            )
        if "key" in params:
            scope_key = api_key_get(key_id=params["key"])
        else:
            scope_key = None if is_admin else api_key
        report = usage_selectors.usage_report(
            api_key=scope_key, day_from=params["from"], day_to=params["to"], group_by=params["group_by"]
        )
        return Response(UsageReportSerializer(
            {"from": params["from"], "to": params["to"], "group_by": params["group_by"], **report}
        ).data)
