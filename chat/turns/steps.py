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
from chat.exceptions import SessionBusy, ToolResultsMismatch
from chat.models import ApiKey, ChatSession, Message, UsageRecord
from chat.providers import CompletionRequest
from chat.sessions.ids import new_session_public_id
from chat.sessions.images import image_data_urls, images_store
from chat.sessions.lease import lease_dead_before
from chat.sessions.selectors import session_has_messages
from chat.sessions.services import merge_memory, title_from
from chat.turns import responses, sql
from chat.turns.history import history_newest_first, last_answer
from chat.turns.inputs import (
    DEFAULT_MAX_TOKENS,
    ChatTurnInput,
    NewMessage,
    StatelessTurnInput,
)
from chat.turns.prompt import HistoryMessage, Prompt, build_prompt, fixed_prompt, max_output_tokens_for_model
from chat.upstreams.selectors import model_check, model_default_for
from chat.usage import limits
from chat.usage.services import usage_begin
from llmserver import db


@dataclass(frozen=True)
class PreparedTurn:
    """A turn whose question is stored (or, stateless, only checked) and whose prompt is built:
    what the upstream call and the turn's end need."""

    api_key_id: int
    # None for a stateless turn: no session, no stored message, no lease.
    session_pk: int | None
    session_id: str
    # The turn's first new message (the user's, or the first tool result), and all of them.
    user_message_id: int | None
    model: str
    prompt: Prompt
    # What is sent upstream: None sends none.
    max_tokens: int | None
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
    new_message_ids: tuple[int, ...] = ()
    # The Responses API's row for this turn, when the turn is a response.
    response_pk: int | None = None

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
    *, session_pk: int, message: NewMessage, model: str, token_count: int | None = None, **fields: Any
) -> Message:
    """`token_count`: the message's tokens under `model`, when already counted."""
    if token_count is None:
        token_count = message.tokens_for(model)
    return Message(
        session_id=session_pk,
        role=message.role,
        content=message.content,
        parts=message.stored_parts,
        tool_calls=message.tool_calls,
        tool_call_id=message.tool_call_id,
        name=message.name,
        token_count=token_count,
        token_encoding=tokens.encoding_name_for_model(model),
        **fields,
    )


def _answered_calls(*, session_pk: int, results: list[NewMessage]) -> HistoryMessage:
    """The stored answer whose tool calls `results` answer: the session's newest replayable message.
    Raises ToolResultsMismatch naming the ids that answer no call, or the calls left unanswered."""
    answer = last_answer(session_pk=session_pk)
    if answer is None or not answer.tool_calls:
        raise ToolResultsMismatch(
            _("This session's last answer made no tool calls, so there is nothing for tool results to answer."),
            details={"tool_call_ids": [result.tool_call_id for result in results]},
        )
    given = [result.tool_call_id for result in results]
    unknown = sorted({call_id for call_id in given if call_id not in answer.call_ids})
    if unknown:
        raise ToolResultsMismatch(
            _("No tool call of this session's last answer has the id %(ids)s.") % {"ids": ", ".join(unknown)},
            details={"unknown_tool_call_ids": unknown, "tool_call_ids": sorted(answer.call_ids)},
        )
    duplicated = sorted({call_id for call_id in given if given.count(call_id) > 1})
    if duplicated:
        raise ToolResultsMismatch(
            _("Send one result for each tool call; these ids have more than one: %(ids)s.")
            % {"ids": ", ".join(duplicated)},
            details={"duplicate_tool_call_ids": duplicated, "tool_call_ids": sorted(answer.call_ids)},
        )
    missing = sorted(answer.call_ids - set(given))
    if missing:
        raise ToolResultsMismatch(
            _("Send one result for each tool call of this session's last answer; missing: %(ids)s.")
            % {"ids": ", ".join(missing)},
            details={"missing_tool_call_ids": missing, "tool_call_ids": sorted(answer.call_ids)},
        )
    return answer


def answer_room(*, model: str, max_tokens: int | None) -> tuple[int, int]:
    """(the tokens kept for the answer in the context window, the most the limits reserve for it).
    A client that sets no max_tokens gets the original default's room in the window, and the
    model's whole output ceiling reserved against its limits: the model may write that much."""
    if max_tokens is not None:
        return max_tokens, max_tokens
    ceiling = max_output_tokens_for_model(model)
    return min(DEFAULT_MAX_TOKENS, ceiling), ceiling


def tools_tokens_of(options: dict[str, Any], model: str) -> int:
    tools = options.get("tools")
    return tokens.count_tools_tokens(tools, model=model) if tools else 0


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
        if turn.response is not None and turn.response.fork_session_pk is not None:
            responses.session_fork_history(
                source_session_pk=turn.response.fork_session_pk,
                through_message_id=turn.response.fork_through_message_id, target_session_pk=session.pk,
            )

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
                if not turn.history_resent:
                    warnings.append(_(
                        "conversation_history was ignored: this session already has stored messages, and its stored "
                        "history is used instead."
                    ))
            else:
                imported = [
                    message if isinstance(message, NewMessage) else NewMessage(role=message[0], content=message[1])
                    for message in turn.conversation_history
                ]
                images_store(api_key_id=api_key.pk, images=[image for m in imported for image in m.images])
                Message.objects.bulk_create(
                    _stored_message(session_pk=session.pk, message=message, model=session.model)
                    for message in imported
                )

        new_messages = turn.new_messages()
        answered_calls = (
            _answered_calls(session_pk=session.pk, results=list(turn.tool_results)) if turn.tool_results else None
        )
        window_room, reserved_room = answer_room(model=session.model, max_tokens=turn.max_tokens)
        # A key out of tokens or budget is refused before the history is read (a long session's
        # history costs a read and a count on every refused turn otherwise).
        new_tokens = [message.tokens_for(session.model) for message in new_messages]
        tools_tokens = tools_tokens_of(turn.options, session.model)
        limits.check_room(
            api_key=api_key, model=session.model, prompt_tokens_at_least=sum(new_tokens) + tools_tokens,
            max_tokens=reserved_room, now=now,
        )
        prompt = build_prompt(
            model=session.model,
            max_tokens=window_room,
            system_prompt=session.system_prompt,
            instructions=turn.instructions,
            memory_facts=session.memory_facts,
            history_newest_first=history_newest_first(
                session_pk=session.pk, before_id=answered_calls.message_id if answered_calls else None
            ),
            new_messages=[message.upstream() for message in new_messages],
            new_messages_tokens=sum(new_tokens),
            answered_calls=answered_calls,
            tools_tokens=tools_tokens,
            image_urls_for=lambda hashes: image_data_urls(api_key_id=api_key.pk, hashes=hashes),
        )
        if prompt.recounted:
            sql.messages_recounted(counts=prompt.recounted)
        reservations = limits.reserve(
            api_key=api_key, model=session.model, prompt_tokens=prompt.prompt_tokens, max_tokens=reserved_room,
            now=now,
        )
        images_store(api_key_id=api_key.pk, images=[image for m in new_messages for image in m.images])
        stored = []
        for message, count in zip(new_messages, new_tokens, strict=True):
            row = _stored_message(
                session_pk=session.pk, message=message, model=session.model, token_count=count,
                status=Message.Status.PENDING,
            )
            row.model = session.model
            db.insert(row)
            stored.append(row.pk)
        record = usage_begin(
            api_key_id=api_key.pk, session_pk=session.pk, user_message_id=stored[0], model=session.model,
            prompt_tokens=prompt.prompt_tokens, key_source=key_source, reservations=reservations, now=now,
        )
        response_pk = None
        if turn.response is not None:
            response_pk = responses.response_begin(
                api_key_id=api_key.pk, session_pk=session.pk, start=turn.response, first_message_id=stored[0],
                model=session.model, now=now,
            )
    return PreparedTurn(
        api_key_id=api_key.pk,
        session_pk=session.pk,
        session_id=session.public_id,
        user_message_id=stored[0],
        new_message_ids=tuple(stored),
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
        response_pk=response_pk,
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
    window_room, reserved_room = answer_room(model=model, max_tokens=turn.max_tokens)
    prompt = fixed_prompt(
        turn.messages, model=model, max_tokens=window_room, tools_tokens=tools_tokens_of(turn.options, model)
    )
    # n answers cost n times the answer's room.
    reserved_room *= turn.options.get("n") or 1
    now = timezone.now()
    with transaction.atomic():
        reservations = limits.reserve(
            api_key=api_key, model=model, prompt_tokens=prompt.prompt_tokens, max_tokens=reserved_room, now=now
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
