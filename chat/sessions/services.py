"""Writes of the sessions: create, change and delete one (its turns are chat/turns/)."""

import re
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from chat.exceptions import SessionAlreadyExists, SessionBusy
from chat.models import ApiKey, ChatSession, UsageRecord
from chat.sessions.content import stored_image_hashes
from chat.sessions.ids import new_session_public_id
from chat.sessions.images import images_forget_unused
from chat.sessions.lease import lease_held
from chat.upstreams.selectors import model_check, model_default_for
from llmserver.http.errors import InvalidInput

TITLE_LENGTH = 80


def title_from(message: str) -> str:
    return re.sub(r"\s+", " ", message).strip()[:TITLE_LENGTH]


def merge_memory(current: list[str], new_facts: list[str]) -> list[str]:
    """`current` followed by the new facts it does not hold yet, within the configured cap."""
    merged = list(current)
    for fact in new_facts:
        if fact not in merged:
            merged.append(fact)
    if len(merged) > settings.CHAT_MAX_MEMORY_FACTS:
        raise InvalidInput(
            _("The session would hold %(count)d memory facts; the limit is %(limit)d.")
            % {"count": len(merged), "limit": settings.CHAT_MAX_MEMORY_FACTS},
            details={"memory_context": [_("Too many memory facts.")]},
        )
    return merged


def session_create(
    *,
    api_key: ApiKey,
    public_id: str = "",
    title: str = "",
    system_prompt: str = "",
    model: str = "",
    memory_facts: list[str] | None = None,
) -> ChatSession:
    """Create a session for `api_key`. An empty `public_id` gets a new random one.

    Raises SessionAlreadyExists when the key already has a session with this id.
    """
    public_id = public_id or new_session_public_id()
    model = model or model_default_for(api_key)
    model_check(api_key=api_key, model=model, key_source=UsageRecord.KeySource.DEFAULT)
    try:
        # The unique constraint decides, not a prior look-up: two requests creating the same id
        # at once both pass a look-up, and one of them must still get 409, not 500.
        with transaction.atomic():
            return ChatSession.objects.create(
                api_key=api_key,
                public_id=public_id,
                title=title,
                system_prompt=system_prompt,
                model=model,
                memory_facts=merge_memory([], memory_facts or []),
            )
    except IntegrityError:
        raise SessionAlreadyExists(details={"session_id": public_id}) from None


def session_update(*, session: ChatSession, changes: dict[str, Any]) -> ChatSession:
    """Apply `changes` (any of title, system_prompt, model, memory_facts; memory replaces)."""
    allowed = {"title", "system_prompt", "model", "memory_facts"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"session_update cannot change {sorted(unknown)}")
    if "memory_facts" in changes:
        changes = {**changes, "memory_facts": merge_memory([], changes["memory_facts"])}
    if "model" in changes:
        model = changes["model"] or model_default_for(session.api_key)
        model_check(api_key=session.api_key, model=model, key_source=UsageRecord.KeySource.DEFAULT)
        changes = {**changes, "model": model}
    for name, value in changes.items():
        setattr(session, name, value)
    session.updated_at = timezone.now()
    session.save(update_fields=[*changes, "updated_at"])
    return session


def session_delete(*, session: ChatSession) -> None:
    """Delete a session and its messages. Its usage records stay, for the bill.

    Raises SessionBusy while a turn of the session is waiting on upstream: its answer and usage
    must have a session to be written to.
    """
    with transaction.atomic():
        locked = ChatSession.objects.select_for_update().filter(pk=session.pk).first()
        if locked is None:
            return
        if lease_held(locked.turn_heartbeat_at, now=timezone.now()):
            raise SessionBusy(details={"session_id": session.public_id}, retry_after=1)
        hashes = {
            sha256 for parts in locked.messages.filter(parts__isnull=False).values_list("parts", flat=True)
            for sha256 in stored_image_hashes(parts)
        }
        locked.delete()
        # Its images go with it, unless another of the key's sessions still shows them.
        images_forget_unused(api_key_id=locked.api_key_id, hashes=hashes)
