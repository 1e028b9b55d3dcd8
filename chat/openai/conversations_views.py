"""OpenAI's Conversations API: a conversation is a session (of the calling key), its items are the
session's messages. A conversation made here is continued by `POST /v1/responses` with
`conversation`, by /v1/chat/completions with `X-Session-Id: <its id>` or by /api/v1/chat with
`session_id`, and the other way round: any session's id is a conversation's."""

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from chat.exceptions import ConversationNotFound, ItemNotFound
from chat.models import ChatSession, Message
from chat.openai.responses_input import InputField
from chat.openai.responses_views import cursor_page, new_id
from chat.openai.responses_wire import stored_items
from chat.openai.serializers import MetadataField
from chat.openai.views import OpenAIView
from chat.openai.wire import OPENAI_ERROR
from chat.sessions.services import session_delete
from chat.turns.conversations import conversation_add, conversation_create
from llmserver.db import in_thread

ERRORS = {code: OPENAI_ERROR for code in (400, 401, 403, 404, 409)}


class ConversationCreateSerializer(serializers.Serializer):
    items = InputField(required=False)
    metadata = MetadataField(required=False, allow_null=True)


class ItemsSerializer(serializers.Serializer):
    items = InputField()


class MetadataSerializer(serializers.Serializer):
    metadata = MetadataField(allow_null=True)


def conversation_object(session: ChatSession) -> dict[str, Any]:
    return {"id": session.public_id, "object": "conversation", "created_at": int(session.created_at.timestamp()),
            "metadata": session.metadata or {}}


def _session(request: Request, conversation_id: str) -> ChatSession:
    session = ChatSession.objects.filter(api_key=request.auth, public_id=conversation_id).first()
    if session is None:
        raise ConversationNotFound(details={"conversation": conversation_id})
    return session


def _checked(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class ConversationListView(OpenAIView):
    @extend_schema(operation_id="openai_conversations_create", tags=["openai"], request=ConversationCreateSerializer,
                   responses={200: OpenApiTypes.OBJECT, **ERRORS})
    async def post(self, request: Request) -> Response:
        data = _checked(ConversationCreateSerializer, request.data)

        def create() -> dict[str, Any]:
            session = conversation_create(api_key=request.auth, public_id=new_id("conv"),
                                          items=data.get("items") or [], metadata=data.get("metadata") or {})
            return conversation_object(session)

        return Response(await in_thread(create)())


class ConversationDetailView(OpenAIView):
    @extend_schema(operation_id="openai_conversations_retrieve", tags=["openai"],
                   responses={200: OpenApiTypes.OBJECT, **ERRORS})
    async def get(self, request: Request, conversation_id: str) -> Response:
        session = await in_thread(_session)(request=request, conversation_id=conversation_id)
        return Response(conversation_object(session))

    @extend_schema(operation_id="openai_conversations_update", tags=["openai"], request=MetadataSerializer,
                   responses={200: OpenApiTypes.OBJECT, **ERRORS})
    async def post(self, request: Request, conversation_id: str) -> Response:
        data = _checked(MetadataSerializer, request.data)

        def update() -> dict[str, Any]:
            session = _session(request, conversation_id)
            session.metadata = data["metadata"] or {}
            session.save(update_fields=["metadata"])
            return conversation_object(session)

        return Response(await in_thread(update)())

    @extend_schema(operation_id="openai_conversations_destroy", tags=["openai"],
                   responses={200: OpenApiTypes.OBJECT, **ERRORS})
    async def delete(self, request: Request, conversation_id: str) -> Response:
        def delete() -> None:
            session_delete(session=_session(request, conversation_id))

        await in_thread(delete)()
        return Response({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


def _items(session: ChatSession) -> list[dict[str, Any]]:
    return [item for message in session.messages.filter(status=Message.Status.COMPLETE).order_by("id")
            for item in stored_items(message)]


class ConversationItemsView(OpenAIView):
    @extend_schema(operation_id="openai_conversation_items_list", tags=["openai"],
                   responses={200: OpenApiTypes.OBJECT, **ERRORS})
    async def get(self, request: Request, conversation_id: str) -> Response:
        def listed() -> list[dict[str, Any]]:
            return _items(_session(request, conversation_id))

        return Response(cursor_page(await in_thread(listed)(), request.query_params))

    @extend_schema(operation_id="openai_conversation_items_create", tags=["openai"], request=ItemsSerializer,
                   responses={200: OpenApiTypes.OBJECT, **ERRORS})
    async def post(self, request: Request, conversation_id: str) -> Response:
        data = _checked(ItemsSerializer, request.data)

        def add() -> list[dict[str, Any]]:
            messages = conversation_add(session=_session(request, conversation_id), items=data["items"])
            return [item for message in messages for item in stored_items(message)]

        added = await in_thread(add)()
        return Response({"object": "list", "data": added, "first_id": added[0]["id"] if added else None,
                         "last_id": added[-1]["id"] if added else None, "has_more": False})


def _message_of(session: ChatSession, item_id: str) -> Message:
    """The message an item id names: msg_<n>, fc_<n>_<call>, fco_<n>."""
    kind, _sep, rest = item_id.partition("_")
    number = rest.split("_")[0]
    message = None
    if kind in ("msg", "fc", "fco") and number.isdigit():
        message = session.messages.filter(pk=int(number), status=Message.Status.COMPLETE).first()
    if message is None:
        raise ItemNotFound(details={"item_id": item_id})
    return message


class ConversationItemView(OpenAIView):
    @extend_schema(operation_id="openai_conversation_items_retrieve", tags=["openai"],
                   responses={200: OpenApiTypes.OBJECT, **ERRORS})
    async def get(self, request: Request, conversation_id: str, item_id: str) -> Response:
        def found() -> dict[str, Any]:
            message = _message_of(_session(request, conversation_id), item_id)
            return next(item for item in stored_items(message) if item["id"] == item_id)

        return Response(await in_thread(found)())

    @extend_schema(operation_id="openai_conversation_items_destroy", tags=["openai"],
                   responses={200: OpenApiTypes.OBJECT, **ERRORS})
    async def delete(self, request: Request, conversation_id: str, item_id: str) -> Response:
        """The item's message goes (all of it: a message with its tool calls is one item set)."""
        def delete() -> dict[str, Any]:
            session = _session(request, conversation_id)
            _message_of(session, item_id).delete()
            return conversation_object(session)

        return Response(await in_thread(delete)())
