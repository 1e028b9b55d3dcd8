"""The steps of a chat turn after its first (steps.py): renewing its lease while upstream works, and
its end, with an answer (`chat_turn_complete`) or without one (`chat_turn_fail`, or
`chat_turn_discard` when upstream was never asked).

Each end is one transaction, and can be run again after a database error without counting the turn
twice: it starts by closing the turn's usage record, a conditional UPDATE that only an in-flight
record passes (chat/usage/services.py), and does nothing more when the record was closed already.
"""

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from chat import tokens
from chat.exceptions import SessionNotFound
from chat.models import Message, Response, UsageRecord
from chat.providers import Completion
from chat.sessions import content
from chat.turns import sql
from chat.turns.responses import response_end
from chat.turns.steps import PreparedTurn
from chat.usage.services import usage_close, usage_discard, usage_heartbeat
from llmserver import db


def _answer(*, turn: PreparedTurn, completion: Completion, latency_ms: int, status: str, error_code: str) -> Message:
    # A tool call cut short is not a call: an incomplete answer keeps its text only.
    tool_calls = list(completion.tool_calls) if completion.tool_calls and not error_code else None
    return Message(
        session_id=turn.session_pk,
        role=Message.Role.ASSISTANT,
        content=completion.text,
        tool_calls=tool_calls,
        token_count=content.message_tokens(
            role=Message.Role.ASSISTANT, content=completion.text, tool_calls=tool_calls, model=turn.model
        ),
        token_encoding=tokens.encoding_name_for_model(turn.model),
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        model=completion.model,
        latency_ms=latency_ms,
        status=status,
        error_code=error_code,
    )


def _close_usage(
    *, turn: PreparedTurn, completion: Completion | None, latency_ms: int, outcome: str, error_code: str,
    session_exists: bool,
) -> bool:
    """Close the turn's usage record (see chat/usage/services.py's usage_close). False when this turn
    closed it already (an end step run again after the database committed it): the caller then
    rolls its transaction back, since the first run wrote everything. When the sweep had closed it
    as interrupted, the tokens it added to the session's totals are taken back."""
    closing = usage_close(
        record=turn.usage_record, session_pk=turn.session_pk if session_exists else None, asked_for=turn.model,
        model=completion.model if completion else turn.model,
        prompt_tokens=completion.prompt_tokens if completion else 0,
        completion_tokens=completion.completion_tokens if completion else 0,
        usage_estimated=completion.usage_estimated if completion else False,
        key_source=turn.key_source, latency_ms=latency_ms, outcome=outcome, error_code=error_code,
        reservations=list(turn.reservations),
    )
    if closing.replaced is not None and session_exists:
        sql.session_add_tokens(
            session_pk=turn.session_pk, prompt_tokens=-closing.replaced.prompt_tokens,
            completion_tokens=-closing.replaced.completion_tokens,
        )
    return closing.counted


def chat_turn_complete(
    *, turn: PreparedTurn, completion: Completion, latency_ms: int, cut_short_by: str = "",
    outcome: str = "",
) -> Message | None:
    """Step 3 when upstream answered, in one transaction: the answer, its usage, the session's
    totals. Returns the stored answer (None for a stateless turn, which stores none, and when this
    step had been run already).

    `cut_short_by` is the error code of whatever ended a streamed answer early (the client went
    away, upstream dropped): the partial answer and its question are stored marked incomplete, so
    that they are kept but never replayed, and the call is recorded as partial (or as `outcome`:
    interrupted, when the server was shutting down).
    """
    outcome = outcome or (UsageRecord.Outcome.PARTIAL if cut_short_by else UsageRecord.Outcome.SUCCESS)
    if turn.stateless:
        with transaction.atomic():
            _close_usage(turn=turn, completion=completion, latency_ms=latency_ms, outcome=outcome,
                         error_code=cut_short_by, session_exists=False)
        return None
    status = Message.Status.INCOMPLETE if cut_short_by else Message.Status.COMPLETE
    answer = _answer(turn=turn, completion=completion, latency_ms=latency_ms, status=status, error_code=cut_short_by)
    with transaction.atomic():
        session_exists = sql.session_end_turn(
            session_pk=turn.session_pk, lease_started_at=turn.lease_started_at, now=timezone.now(),
            prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens,
        )
        if session_exists:
            sql.messages_set_status(message_ids=turn.new_message_ids, status=status, error_code=cut_short_by)
            db.insert(answer)
            if turn.response_pk is not None:
                response_end(
                    response_pk=turn.response_pk,
                    status=Response.Status.INCOMPLETE if cut_short_by else Response.Status.COMPLETED,
                    output_message_id=answer.pk, model=completion.model, input_tokens=completion.prompt_tokens,
                    output_tokens=completion.completion_tokens, error_code=cut_short_by,
                )
        # Last: the roll-ups and the key's limit counters are rows every turn of the key (or of
        # the model) updates, and each turn holds their locks from its UPDATE until it commits.
        # Written first, they made a key's concurrent turns wait for the rest of each other's
        # transactions (sampled from pg_stat_activity at 8 clients: a third as many lock waits since).
        if not _close_usage(turn=turn, completion=completion, latency_ms=latency_ms, outcome=outcome,
                            error_code=cut_short_by, session_exists=session_exists):
            transaction.set_rollback(True)
            return None
    if not session_exists:
        # Deleted while upstream answered (possible only once the lease had run out): the tokens
        # were spent all the same, so they were recorded above, against no session.
        raise SessionNotFound(
            _("The session was deleted while its answer was being written; the tokens used were recorded."),
            details={"session_id": turn.session_id},
        )
    return answer


def chat_turn_fail(
    *, turn: PreparedTurn, error_code: str, latency_ms: int, completion: Completion | None = None,
    outcome: str = UsageRecord.Outcome.FAILED,
) -> None:
    """Step 3 on failure, in one transaction: the user's message is kept, marked failed (so it is
    never replayed); no answer is invented; the call is recorded as failed (or as `outcome`), with
    the tokens of `completion` when upstream did answer (and storing the answer is what failed),
    else none."""
    if completion is None and outcome == UsageRecord.Outcome.INTERRUPTED:
        # Cut off by the server's shutdown while upstream worked: the prompt was sent, so it is
        # counted (by our count), as the sweep counts a turn whose process died.
        completion = Completion(
            text="", model=turn.model, prompt_tokens=turn.prompt.prompt_tokens, completion_tokens=0,
            usage_estimated=True, finish_reason=None,
        )
    with transaction.atomic():
        session_exists = False
        if not turn.stateless:
            # The session's totals hold its calls' tokens: those of `completion`, when there is one.
            session_exists = sql.session_end_turn(
                session_pk=turn.session_pk, lease_started_at=turn.lease_started_at, now=timezone.now(),
                prompt_tokens=completion.prompt_tokens if completion else 0,
                completion_tokens=completion.completion_tokens if completion else 0,
            )
            sql.messages_set_status(
                message_ids=turn.new_message_ids, status=Message.Status.FAILED, error_code=error_code
            )
            if turn.response_pk is not None:
                response_end(
                    response_pk=turn.response_pk, status=Response.Status.FAILED, error_code=error_code,
                    input_tokens=completion.prompt_tokens if completion else 0,
                    output_tokens=completion.completion_tokens if completion else 0,
                )
        if not _close_usage(turn=turn, completion=completion, latency_ms=latency_ms, outcome=outcome,
                            error_code=error_code, session_exists=session_exists):
            transaction.set_rollback(True)


def chat_turn_discard(*, turn: PreparedTurn, error_code: str) -> None:
    """End a turn whose upstream call was never made (the client left while its question was being
    stored): the question is kept, failed; the lease released; and no usage record, since there was
    no call (the limits' reservations are given back, but for the request itself)."""
    with transaction.atomic():
        if not turn.stateless:
            sql.session_end_turn(session_pk=turn.session_pk, lease_started_at=turn.lease_started_at, now=timezone.now())
            sql.messages_set_status(
                message_ids=turn.new_message_ids, status=Message.Status.FAILED, error_code=error_code
            )
            if turn.response_pk is not None:
                response_end(response_pk=turn.response_pk, status=Response.Status.FAILED, error_code=error_code)
        usage_discard(record=turn.usage_record, reservations=list(turn.reservations))


def chat_turn_renew(*, turn: PreparedTurn, text_so_far: str = "") -> bool:
    """The turn is still running: renew its session's lease and its usage record's heartbeat, with
    the tokens of what a stream has written so far (what the sweep would record should the process
    die). False when the lease is no longer this turn's (taken for dead and given to another turn)."""
    now = timezone.now()
    completion_tokens = tokens.count_text_tokens(text_so_far, model=turn.model) if text_so_far else 0
    with transaction.atomic():
        usage_heartbeat(record_id=turn.usage_record.pk, now=now, completion_tokens=completion_tokens)
        if turn.stateless:
            return True
        return sql.session_renew_lease(session_pk=turn.session_pk, lease_started_at=turn.lease_started_at, now=now)

