"""OpenAI's Responses API: `POST /v1/responses`, and a stored response's retrieval, deletion and input
items. A response is a turn of a session (a conversation): the same rows as the other APIs', so a
conversation begun here can be continued through /v1/chat/completions with X-Session-Id or
/api/v1/chat, and the other way round.

- `previous_response_id` continues that response's session when it is the session's last; else the
  new response branches: a new session, with that response's history copied, so that its context is
  its own ancestors and not what the session did since;
- `conversation` continues that session;
- neither: a new session (`conv_…`), with the input's earlier messages as its history;
- `store: false`: nothing is kept but the usage record (the response cannot be retrieved).
"""

import secrets
from typing import Any

from django.http.response import HttpResponseBase
from django.utils import timezone
from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from chat.exceptions import ConversationNotFound
from chat.models import ChatSession, Message
from chat.models import Response as StoredResponse
from chat.openai.responses_input import ResponseRequestSerializer, upstream_options
from chat.openai.responses_wire import ResponseView, echoed, response_events, stored_items
from chat.openai.views import OpenAIView
from chat.openai.wire import OPENAI_ERROR
from chat.turns import run
from chat.turns.inputs import ChatTurnInput, ResponseStart, StatelessTurnInput, resent_conversation
from chat.turns.responses import response_get, response_input_messages, session_last_message_id
from chat.upstreams.choice import upstream_choose
from llmserver.db import in_thread
from llmserver.http.errors import InvalidInput
from llmserver.http.sse import EventStreamRenderer, event_stream_response, json_unless_streaming

OPENAI_DEFAULT_TEMPERATURE = 1.0


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _instructions_and(messages: list[dict[str, Any]], instructions: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": instructions}, *messages] if instructions else messages


def _where(api_key: Any, data: dict[str, Any]) -> tuple[str, ResponseStart, str | None]:
    """The session the response goes to (its public id), its start, and the previous response's
    id it continues. Raises ResponseNotFound, ConversationNotFound, InvalidInput."""
    public_id = new_id("resp")
    request = echoed(data)
    previous_id = data.get("previous_response_id")
    if previous_id:
        previous = response_get(api_key_id=api_key.pk, public_id=previous_id)
        if previous.output_message_id is None or previous.status != StoredResponse.Status.COMPLETED:
            raise InvalidInput(
                _("The response %(id)s did not complete, so it cannot be continued.") % {"id": previous_id},
                details={"previous_response_id": previous_id, "status": previous.status},
            )
        start = ResponseStart(public_id=public_id, parent_pk=previous.pk, request=request)
        if session_last_message_id(session_pk=previous.session_id) == previous.output_message_id:
            return previous.session.public_id, start, previous_id
        start = ResponseStart(public_id=public_id, parent_pk=previous.pk, request=request,
                              fork_session_pk=previous.session_id, fork_through_message_id=previous.output_message_id)
        return new_id("conv"), start, previous_id
    conversation = data.get("conversation")
    if conversation:
        if not ChatSession.objects.filter(api_key=api_key, public_id=conversation).exists():
            raise ConversationNotFound(details={"conversation": conversation})
        return conversation, ResponseStart(public_id=public_id, request={**request, "conversation": conversation}), None
    return new_id("conv"), ResponseStart(public_id=public_id, request=request), None


def _turn(*, api_key: Any, data: dict[str, Any]) -> tuple[ChatTurnInput | StatelessTurnInput, ResponseView]:
    temperature = data.get("temperature")
    temperature = OPENAI_DEFAULT_TEMPERATURE if temperature is None else temperature
    options = upstream_options(data)
    instructions = data.get("instructions") or ""
    if data.get("store") is False:
        if data.get("previous_response_id") or data.get("conversation"):
            raise InvalidInput(
                _("With store: false a response keeps nothing, so it cannot continue a stored conversation here."),
                details={"store": [_("Send store: true to continue previous_response_id or conversation.")]},
            )
        view = ResponseView(public_id=new_id("resp"), status="in_progress", model=data["model"],
                            created_at=timezone.now(), request=echoed(data))
        messages = [message.upstream() for message in data["input"]]
        return StatelessTurnInput(
            messages=_instructions_and(messages, instructions), model=data["model"],
            max_tokens=data.get("max_output_tokens"), temperature=temperature, options=options,
        ), view
    session_id, start, previous_id = _where(api_key, data)
    resent = resent_conversation(data["input"])
    if resent.empty:
        raise InvalidInput(
            _("The input must end with a user's message, or with the outputs of the last response's function calls."),
            details={"input": [_("The last item must be a user message or a function_call_output.")]},
        )
    user = resent.user
    view = ResponseView(
        public_id=start.public_id, status="in_progress", model=data["model"], created_at=timezone.now(),
        request=start.request, previous_response_id=previous_id,
        conversation_id=session_id if data.get("conversation") else None,
    )
    return ChatTurnInput(
        user_message=user.content if user else "", user_parts=user.parts if user else None,
        tool_results=resent.results, session_id=session_id, system_prompt=resent.persona, model=data["model"],
        max_tokens=data.get("max_output_tokens"), temperature=temperature,
        conversation_history=list(resent.earlier), history_resent=True, options=options,
        instructions=instructions, response=start,
    ), view


def _finished(view: ResponseView):  # type: ignore[no-untyped-def]
    def fill(result: run.ChatTurnResult) -> None:
        view.status = "completed"
        view.completed_at = timezone.now()
        view.model = result.model
        view.text = result.response_text
        view.tool_calls = result.tool_calls
        view.input_tokens, view.output_tokens = result.prompt_tokens, result.completion_tokens
    return fill


class ResponsesView(OpenAIView):
    renderer_classes = [*OpenAIView.renderer_classes, EventStreamRenderer]

    @extend_schema(
        operation_id="openai_responses_create",
        summary="OpenAI's Responses API over any chat-completions model; the server keeps the conversation.",
        tags=["openai"], request=ResponseRequestSerializer,
        responses={
            (200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT, description="A response object."),
            (200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, description="Response stream events."),
            **{code: OPENAI_ERROR for code in (400, 401, 403, 404, 409, 413, 422, 429, 502, 503, 504)},
        },
    )
    async def post(self, request: Request) -> HttpResponseBase:
        json_unless_streaming(request)
        serializer = ResponseRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        turn, view = await in_thread(_turn)(api_key=request.auth, data=data)
        if not view.model:
            view.model = data["model"]
        upstream = upstream_choose(api_key=request.auth, user_key="", free_mode=False)
        fill = _finished(view)
        if not data["stream"]:
            result = await run.chat_turn_run(api_key=request.auth, upstream=upstream, turn=turn)
            fill(result)
            return Response(view.body())
        pieces = run.chat_turn_stream(api_key=request.auth, upstream=upstream, turn=turn)
        first = await anext(pieces)
        return event_stream_response(response_events(view, first, pieces, finished=fill))


def stored_view(*, response: StoredResponse) -> ResponseView:
    """A stored response as its object says it."""
    answer = Message.objects.filter(pk=response.output_message_id).first() if response.output_message_id else None
    parent = StoredResponse.objects.filter(pk=response.parent_id).values_list("public_id", flat=True).first()
    error = {"code": response.error_code, "message": response.error_code} if response.error_code else None
    return ResponseView(
        public_id=response.public_id, status=response.status, model=response.model,
        created_at=response.created_at, completed_at=response.completed_at, request=response.request,
        text=answer.content if answer else "", tool_calls=(answer.tool_calls or []) if answer else [],
        input_tokens=response.input_tokens, output_tokens=response.output_tokens,
        previous_response_id=parent,
        conversation_id=response.session.public_id if response.request.get("conversation") else None, error=error,
    )


class ResponseDetailView(OpenAIView):
    @extend_schema(operation_id="openai_responses_retrieve", tags=["openai"],
                   responses={200: OpenApiTypes.OBJECT, **{code: OPENAI_ERROR for code in (401, 404)}})
    async def get(self, request: Request, response_id: str) -> Response:
        response = await in_thread(response_get)(api_key_id=request.auth.pk, public_id=response_id)
        return Response((await in_thread(stored_view)(response=response)).body())

    @extend_schema(operation_id="openai_responses_destroy", tags=["openai"],
                   responses={200: OpenApiTypes.OBJECT, **{code: OPENAI_ERROR for code in (401, 404)}})
    async def delete(self, request: Request, response_id: str) -> Response:
        """The response's id goes; its messages stay in their conversation."""
        def delete() -> None:
            response_get(api_key_id=request.auth.pk, public_id=response_id).delete()

        await in_thread(delete)()
        return Response({"id": response_id, "object": "response.deleted", "deleted": True}, status=status.HTTP_200_OK)


def cursor_page(items: list[dict[str, Any]], query: Any) -> dict[str, Any]:
    """OpenAI's cursor pagination: `order` (asc or desc), `after` (an item's id), `limit` (1 to 100)."""
    try:
        limit = min(max(int(query.get("limit", 20)), 1), 100)
    except ValueError:
        raise InvalidInput(details={"limit": [_("limit is a whole number from 1 to 100.")]}) from None
    if query.get("order", "desc") not in ("asc", "desc"):
        raise InvalidInput(details={"order": [_("order is asc or desc.")]})
    if query.get("order", "desc") == "desc":
        items = list(reversed(items))
    after = query.get("after")
    if after:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidInput(details={"after": [_("No item with this id is in the list.")]})
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}


class ResponseInputItemsView(OpenAIView):
    @extend_schema(operation_id="openai_responses_input_items", tags=["openai"],
                   responses={200: OpenApiTypes.OBJECT, **{code: OPENAI_ERROR for code in (400, 401, 404)}})
    async def get(self, request: Request, response_id: str) -> Response:
        def items() -> list[dict[str, Any]]:
            response = response_get(api_key_id=request.auth.pk, public_id=response_id)
            return [item for message in response_input_messages(response=response) for item in stored_items(message)]

        return Response(cursor_page(await in_thread(items)(), request.query_params))
