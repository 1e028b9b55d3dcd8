"""Reads of the sessions and their messages, each next to the index that serves it."""

from django.db.models import QuerySet

from chat.exceptions import SessionNotFound
from chat.models import ApiKey, ChatSession, Message


def session_get(*, api_key: ApiKey, public_id: str) -> ChatSession:
    """The key's session with this id. Another key's session is 'not found', never 'forbidden':
    a caller must not learn which ids other keys use."""
    session = ChatSession.objects.filter(api_key=api_key, public_id=public_id).first()
    if session is None:
        raise SessionNotFound()
    return session


def session_list(*, api_key: ApiKey) -> QuerySet[ChatSession]:
    """The key's sessions, newest first (index chat_session_list_idx)."""
    return ChatSession.objects.filter(api_key=api_key).order_by("-created_at", "-id")


def message_list(*, session: ChatSession) -> QuerySet[Message]:
    """The session's messages, oldest first (index chat_message_list_idx)."""
    return Message.objects.filter(session=session).order_by("id")


def session_has_messages(*, session_pk: int) -> bool:
    return Message.objects.filter(session_id=session_pk).exists()
