"""The first step of a chat turn, and what a turn is. A turn is three short steps, and no database
transaction is ever open while the model thinks:
1. `chat_turn_begin` (one transaction): find or create the session, take its turn lease
   (chat/sessions/lease.py), build the prompt from stored history, reserve against the key's
   limits, store the user's message as pending and the call's usage record as in flight;
2. the upstream call, with no transaction open (run.py), the lease renewed while it lasts;
3. `chat_turn_complete` or `chat_turn_fail` (end.py, one transaction): store the answer, close
   the usage record, add to the session's totals, or mark the user's message failed; release
   the lease.

The statements on this path are written out once (sql.py), not built by the ORM on every turn.
"""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from chat import tokens
from chat.exceptions import SessionBusy
from chat.models import ApiKey, ChatSession, Message, UsageRecord
from chat.providers import CompletionRequest
from chat.sessions.ids import new_session_public_id
from chat.sessions.lease import lease_dead_before
from chat.sessions.selectors import session_has_messages
from chat.sessions.services import merge_memory, title_from
from chat.turns import sql
from chat.turns.history import history_newest_first
from chat.turns.prompt import Prompt, build_prompt, fixed_prompt
from chat.upstreams.selectors import model_check, model_default_for
from chat.usage import limits
from chat.usage.services import usage_begin
from llmserver import db

# The original contract's defaults (POST /api/v1/chat); the API's serializer takes them from here.
DEFAULT_MAX_TOKENS = 1000
DEFAULT_TEMPERATURE = 0.7


@dataclass(frozen=True)
class ChatTurnInput:
    """One turn as the client asked for it (the original `ChatRequest` contract)."""

    user_message: str
    session_id: str = ""
    system_prompt: str = ""
    model: str = ""
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    memory_context: list[str] = field(default_factory=list)
    # Earlier turns as (role, content), imported only into a session with no messages yet.
    conversation_history: list[tuple[str, str]] = field(default_factory=list)
    # Further sampling parameters passed upstream as they are (the OpenAI-compatible endpoint's
    # top_p, stop, seed, …); already validated.
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StatelessTurnInput:
    """A call that keeps no conversation (the OpenAI-compatible endpoint without X-Session-Id):
    the client sends the whole prompt, nothing is stored but the call's usage."""

    messages: list[dict[str, str]]
    model: str = ""
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PreparedTurn:
    """A turn whose question is stored (or, stateless, only checked) and whose prompt is built:
    what the upstream call and the turn's end need."""

    api_key_id: int
    # None for a stateless turn: no session, no stored message, no lease.
    session_pk: int | None
    session_id: str
    user_message_id: int | None
    model: str
    prompt: Prompt
    max_tokens: int
    temperature: float
    warnings: list[str]
    # The lease this turn holds: only this turn's end may release it.
    lease_started_at: datetime | None
    # The call's record, written in flight by the first step and closed by the turn's end.
    usage_record: UsageRecord
    key_source: str = UsageRecord.KeySource.DEFAULT
    # What the turn reserved against the key's limits, settled when it ends.
    reservations: tuple[limits.Reservation, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def stateless(self) -> bool:
        return self.session_pk is None

    def completion_request(self) -> CompletionRequest:
        return CompletionRequest(
            model=self.model,
            messages=self.prompt.messages,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            options=self.options,
        )


def _stored_message(
    *, session_pk: int, role: str, content: str, model: str, token_count: int | None = None, **fields: Any
) -> Message:
    """`token_count`: the message's tokens under `model`, when already counted."""
    if token_count is None:
        token_count = tokens.count_message_tokens(role=role, content=content, model=model)
    return Message(
        session_id=session_pk,
        role=role,
        content=content,
        token_count=token_count,
        token_encoding=tokens.encoding_name_for_model(model),
        **fields,
    )


def _session_leased(*, api_key: ApiKey, turn: ChatTurnInput, now: datetime, key_source: str) -> ChatSession:
    """The turn's session with its lease taken, and the model checked: an existing session in a
    single UPDATE; else a new one, created leased. Raises ModelNotAllowed or ModelNotAvailable
    before SessionBusy (when another turn holds the lease), as for a free session."""
    new_fields = {
        "model": turn.model or model_default_for(api_key),
        "title": title_from(turn.user_message),
        "turn_started_at": now,
        "turn_heartbeat_at": now,
    }
    if not turn.session_id:
        # An id made up just now cannot exist yet: no lookup, no savepoint.
        session = ChatSession(api_key=api_key, public_id=new_session_public_id(), **new_fields)
        db.insert(session)
        created = True
    else:
        session = sql.session_lease(
            api_key_id=api_key.pk, public_id=turn.session_id, now=now, dead_before=lease_dead_before(now)
        )
        if session is not None:
            model_check(api_key=api_key, model=turn.model or session.model, key_source=key_source)
            return session
        session, created = ChatSession.objects.get_or_create(
            api_key=api_key, public_id=turn.session_id, defaults=new_fields
        )
    model_check(api_key=api_key, model=turn.model or session.model, key_source=key_source)
    if not created:
        # It exists, so the UPDATE above found its lease held (or another request created, and
        # leased, it a moment ago).
        raise SessionBusy(details={"session_id": session.public_id}, retry_after=1)
    return session


def chat_turn_begin(
    *, api_key: ApiKey, turn: ChatTurnInput, key_source: str = UsageRecord.KeySource.DEFAULT
) -> PreparedTurn:
    """Step 1 of a turn, in one short transaction. Stores nothing when it raises.

    Raises SessionBusy when another turn of the session is in flight, ContextTooLong when the
    new message cannot fit, InvalidInput for too many memory facts, ModelNotAllowed or
    ModelNotAvailable when the key may not use the model, LimitExceeded (or ModelNotPriced) when
    its limits do not allow the turn.
    """
    now = timezone.now()
    warnings: list[str] = []
    with transaction.atomic():
        session = _session_leased(api_key=api_key, turn=turn, now=now, key_source=key_source)

        changed: list[str] = []
        if turn.system_prompt and turn.system_prompt != session.system_prompt:
            session.system_prompt = turn.system_prompt
            changed.append("system_prompt")
        if turn.model and turn.model != session.model:
            session.model = turn.model
            changed.append("model")
        if turn.memory_context:
            merged = merge_memory(session.memory_facts, turn.memory_context)
            if merged != session.memory_facts:
                session.memory_facts = merged
                changed.append("memory_facts")
        if not session.title:
            session.title = title_from(turn.user_message)
            changed.append("title")
        if changed:
            session.save(update_fields=changed)

        if turn.conversation_history:
            if session_has_messages(session_pk=session.pk):
                warnings.append(
                    _(
                        "conversation_history was ignored: this session already has stored messages, and its stored "
                        "history is used instead."
                    )
                )
            else:
                Message.objects.bulk_create(
                    _stored_message(session_pk=session.pk, role=role, content=content, model=session.model)
                    for role, content in turn.conversation_history
                )

        # A key out of tokens or budget is refused before the history is read (a long session's
        # history costs a read and a count on every refused turn otherwise).
        user_message_tokens = tokens.count_message_tokens(role="user", content=turn.user_message, model=session.model)
        limits.check_room(
            api_key=api_key, model=session.model, prompt_tokens_at_least=user_message_tokens,
            max_tokens=turn.max_tokens, now=now,
        )
        prompt = build_prompt(
            model=session.model,
            max_tokens=turn.max_tokens,
            system_prompt=session.system_prompt,
            memory_facts=session.memory_facts,
            history_newest_first=history_newest_first(session_pk=session.pk),
            user_message=turn.user_message,
            user_message_tokens=user_message_tokens,
        )
        if prompt.recounted:
            sql.messages_recounted(counts=prompt.recounted)
        reservations = limits.reserve(
            api_key=api_key, model=session.model, prompt_tokens=prompt.prompt_tokens, max_tokens=turn.max_tokens,
            now=now,
        )
        user_message = _stored_message(
            session_pk=session.pk,
            role=Message.Role.USER,
            content=turn.user_message,
            model=session.model,
            token_count=prompt.user_message_tokens,
            status=Message.Status.PENDING,
        )
        user_message.model = session.model
        db.insert(user_message)
        record = usage_begin(
            api_key_id=api_key.pk, session_pk=session.pk, user_message_id=user_message.pk, model=session.model,
            prompt_tokens=prompt.prompt_tokens, key_source=key_source, reservations=reservations, now=now,
        )
    return PreparedTurn(
        api_key_id=api_key.pk,
        session_pk=session.pk,
        session_id=session.public_id,
        user_message_id=user_message.pk,
        model=session.model,
        prompt=prompt,
        max_tokens=turn.max_tokens,
        temperature=turn.temperature,
        warnings=warnings,
        lease_started_at=now,
        usage_record=record,
        key_source=key_source,
        reservations=tuple(reservations),
        options=turn.options,
    )


def stateless_turn_begin(
    *, api_key: ApiKey, turn: StatelessTurnInput, key_source: str = UsageRecord.KeySource.DEFAULT
) -> PreparedTurn:
    """Step 1 of a turn that keeps no conversation: check the model and the prompt's size, reserve
    against the key's limits, and write the call's usage record in flight. Stores nothing else.

    Raises ModelNotAllowed or ModelNotAvailable, ContextTooLong, or LimitExceeded.
    """
    model = turn.model or model_default_for(api_key)
    model_check(api_key=api_key, model=model, key_source=key_source)
    prompt = fixed_prompt(turn.messages, model=model, max_tokens=turn.max_tokens)
    now = timezone.now()
    with transaction.atomic():
        reservations = limits.reserve(
            api_key=api_key, model=model, prompt_tokens=prompt.prompt_tokens, max_tokens=turn.max_tokens, now=now
        )
        record = usage_begin(
            api_key_id=api_key.pk, session_pk=None, user_message_id=None, model=model,
            prompt_tokens=prompt.prompt_tokens, key_source=key_source, reservations=reservations, now=now,
        )
    return PreparedTurn(
        api_key_id=api_key.pk,
        session_pk=None,
        session_id="",
        user_message_id=None,
        model=model,
        prompt=prompt,
        max_tokens=turn.max_tokens,
        temperature=turn.temperature,
        warnings=[],
        lease_started_at=None,
        usage_record=record,
        key_source=key_source,
        reservations=tuple(reservations),
        options=turn.options,
    )
