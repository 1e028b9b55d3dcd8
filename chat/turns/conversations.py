"""The Conversations API's writes: a conversation is a session, its items are its messages. Items added
outside a turn are stored complete, as an imported history is; a session whose turn is under way
takes none (its next message is being answered)."""

from typing import Any

from django.db import transaction
from django.utils import timezone

from chat import tokens
from chat.exceptions import SessionBusy
from chat.models import ApiKey, ChatSession, Message
from chat.sessions.images import images_store
from chat.sessions.lease import lease_held
from chat.turns.inputs import NewMessage
from chat.upstreams.selectors import model_default_for


def conversation_create(
    *, api_key: ApiKey, public_id: str, items: list[NewMessage], metadata: dict[str, Any]
) -> ChatSession:
    with transaction.atomic():
        session = ChatSession.objects.create(
            api_key=api_key, public_id=public_id, model=model_default_for(api_key), metadata=metadata,
        )
        conversation_add(session=session, items=items)
    return session


def conversation_add(*, session: ChatSession, items: list[NewMessage]) -> list[Message]:
    """Append `items` to the session's history. Raises SessionBusy while a turn of it is under way."""
    with transaction.atomic():
        locked = ChatSession.objects.select_for_update().get(pk=session.pk)
        if lease_held(locked.turn_heartbeat_at, now=timezone.now()):
            raise SessionBusy(details={"conversation": session.public_id}, retry_after=1)
        images_store(api_key_id=locked.api_key_id, images=[image for item in items for image in item.images])
        messages = [
            Message(
                session_id=locked.pk, role=item.role, content=item.content, parts=item.stored_parts,
                tool_calls=item.tool_calls, tool_call_id=item.tool_call_id, name=item.name,
                token_count=item.tokens_for(locked.model), token_encoding=tokens.encoding_name_for_model(locked.model),
            )
            for item in items
        ]
        return Message.objects.bulk_create(messages)
