"""Running a chat turn end to end, answered whole (`chat_turn_run`) or streamed (`chat_turn_stream`).

Both wrap the steps of steps.py and end.py (begin, the upstream call with no transaction open,
complete or fail) and guarantee the same things however a turn ends — an upstream error, a
timeout, the client going away, a bug, the server shutting down, the database failing:
- the session's lease is released (or, if the process dies, free within CHAT_TURN_LEASE_SECONDS);
- the user's message is kept, with its status (never left pending);
- the call is recorded exactly once, with the tokens upstream reported or, when an answer was cut
  short, our own count of what was generated (marked estimated); the record is written before the
  call, so that a process that dies mid-call leaves it for the sweep to close (sweep.py);
- a call never made (the client left before it) leaves no record;
- no answer is invented: a streamed answer cut short is stored as it was, marked incomplete.

The database steps run in threads, in their turn (llmserver/db.py); the ones that end a turn are
shielded from cancellation, so that a client who disconnects cannot leave a turn half-written, and
tried again for a few seconds when the database fails (they are safe to run twice).
"""

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

from django import db

from chat import tokens
from chat.exceptions import SessionNotFound, UpstreamBadResponse, UpstreamTimeout
from chat.models import ApiKey, Message, UsageRecord
from chat.providers import Completion, StreamDelta
from chat.sessions.lease import heartbeat_interval_seconds, upstream_deadline_seconds
from chat.turns import end, metrics, steps
from chat.turns.inputs import ChatTurnInput, StatelessTurnInput
from chat.turns.steps import PreparedTurn
from chat.upstreams.choice import UpstreamChoice, upstream_confirm
from chat.upstreams.selectors import model_check
from llmserver.db import in_thread, unavailable
from llmserver.http.errors import ApiError

# The name the turn's log lines have always had (operators filter on it), not this module's.
logger = logging.getLogger("chat.turns")

CLIENT_DISCONNECTED = "client_disconnected"
INTERNAL_ERROR = "internal_error"
# Cut off by the server's own shutdown: the turns still waiting on upstream once uvicorn has waited
# GRACEFUL_SHUTDOWN_SECONDS for them (`turns_ending`).
SERVER_SHUTDOWN = "server_shutdown"
SHUTDOWN_MESSAGE = "server shutdown"
# The waits before an end step is tried again after the database failed: about 8 s in all, then
# the sweep closes the turn instead.
DATABASE_RETRY_WAITS = (0.25, 0.5, 1.0, 2.0, 4.0)
# The tasks of the turns waiting on upstream, and the end steps under way: what a server shutting
# down cuts short and waits for (turns_ending).
_running: set[asyncio.Task] = set()
_ending: set[asyncio.Future] = set()


@dataclass(frozen=True)
class ChatTurnResult:
    session_id: str
    # None for a stateless turn, which stores no message.
    message_id: int | None
    user_message_id: int | None
    response_text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens_used: int
    response_time: float
    key_source: str
    warnings: list[str]
    finish_reason: str | None
    # The answer's tool calls, whole (empty when it made none).
    tool_calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # OpenAI-compatible API only (not in /api/v1/chat's answer): the first choice's logprobs, and
    # the choices after it when `n` asked for several.
    logprobs: Any = dataclasses.field(default=None, repr=False)
    more_choices: tuple[dict[str, Any], ...] = dataclasses.field(default=(), repr=False)


def _elapsed_ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


def _cancelled_by_shutdown(exc: BaseException) -> bool:
    """`turns_ending` cancels the turns left when the server stops, saying so."""
    return isinstance(exc, asyncio.CancelledError) and SHUTDOWN_MESSAGE in exc.args


def _error_code_of(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return exc.error_code
    if _cancelled_by_shutdown(exc):
        return SERVER_SHUTDOWN
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return CLIENT_DISCONNECTED
    if (database_error := unavailable(exc)) is not None:
        return database_error.error_code
    return INTERNAL_ERROR


def _outcome_of(error_code: str, *, partial: bool) -> str:
    if error_code == SERVER_SHUTDOWN:
        return UsageRecord.Outcome.INTERRUPTED
    return UsageRecord.Outcome.PARTIAL if partial else UsageRecord.Outcome.FAILED


async def _with_retries(step: Callable[..., Any], **kwargs: Any) -> Any:
    """`step` in a thread, tried again while the database fails (DATABASE_RETRY_WAITS)."""
    for wait in (*DATABASE_RETRY_WAITS, None):
        try:
            return await in_thread(step, urgent=True)(**kwargs)
        except (db.OperationalError, db.InterfaceError) as exc:
            if wait is None:
                raise
            logger.warning("%s failed (%s: %s); trying again in %.2f s", step.__name__, type(exc).__name__, exc, wait)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")


async def _ending_step(step: Callable[..., Any], **kwargs: Any) -> Any:
    """An end step, run to its end even if the turn's task is cancelled meanwhile (the client
    leaving, the server shutting down): a turn must not be left half-written."""
    task = asyncio.ensure_future(_with_retries(step, **kwargs))
    _ending.add(task)
    task.add_done_callback(_ending.discard)
    return await asyncio.shield(task)


@contextmanager
def _running_turn() -> Iterator[None]:
    """The current task is a turn waiting on upstream, for `turns_ending` to find."""
    task = asyncio.current_task()
    if task is not None:
        _running.add(task)
    try:
        yield
    finally:
        _running.discard(task)  # type: ignore[arg-type]


async def turns_ending(*, timeout: float) -> int:
    """End the turns still waiting on upstream, and wait (at most `timeout` seconds) for their ends
    to be written. A stopping server calls this once uvicorn has waited GRACEFUL_SHUTDOWN_SECONDS
    for its requests: uvicorn then cancels the requests left, but Django's handler runs each view
    in a task of its own, which that does not reach, and which the process would drop unfinished.
    Cancelled here, each turn records its call as interrupted (server_shutdown), marks its question
    failed and releases its session. Returns how many were not done after the wait."""
    for task in list(_running):
        task.cancel(SHUTDOWN_MESSAGE)
    pending = {*_running, *_ending}
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    return len(_running | _ending)


async def _begin(
    *, api_key: ApiKey, upstream: UpstreamChoice, turn: ChatTurnInput | StatelessTurnInput
) -> tuple[PreparedTurn, UpstreamChoice]:
    """Step 1 in a thread, then the choice of upstream confirmed (free_mode's check of the caller's
    key comes only now, once the turn is admitted). If the client goes away meanwhile, the write
    goes on regardless: wait for it, then end the turn (upstream was not asked: no usage record)."""
    step = steps.chat_turn_begin if isinstance(turn, ChatTurnInput) else steps.stateless_turn_begin
    begin = asyncio.ensure_future(in_thread(step)(api_key=api_key, turn=turn, key_source=upstream.key_source))
    try:
        prepared = await asyncio.shield(begin)
    except asyncio.CancelledError as exc:
        try:
            prepared = await begin
        except ApiError:
            raise asyncio.CancelledError from None
        await _ending_step(end.chat_turn_discard, turn=prepared, error_code=_error_code_of(exc))
        raise
    try:
        # free_mode's check is an upstream call of its own: the turn's lease is renewed meanwhile.
        async with _kept_alive(prepared):
            confirmed = await upstream_confirm(upstream)
        if confirmed.key_source != prepared.key_source:
            # free_mode fell back on the server's key: the key's model rules for it apply.
            model_check(api_key=api_key, model=prepared.model, key_source=confirmed.key_source)
            prepared = dataclasses.replace(prepared, key_source=confirmed.key_source)
    except BaseException as exc:
        await _ending_step(end.chat_turn_discard, turn=prepared, error_code=_error_code_of(exc))
        _name_turn_in(exc, prepared)
        raise
    logger.info(
        "chat start session=%s key=%s model=%s key_source=%s history_messages=%d prompt_tokens=%d",
        prepared.session_id or "-", api_key.key_id, prepared.model, prepared.key_source,
        prepared.prompt.history_used, prepared.prompt.prompt_tokens,
    )
    return prepared, confirmed


@asynccontextmanager
async def _kept_alive(prepared: PreparedTurn, written: list[str] | None = None) -> AsyncIterator[None]:
    """While the block runs (the upstream call), renew the turn's lease and its usage record's
    heartbeat every heartbeat_interval_seconds(), with the tokens of what a stream has `written`
    so far. A turn quicker than that writes nothing more."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(heartbeat_interval_seconds())
            try:
                held = await in_thread(end.chat_turn_renew, urgent=True)(
                    turn=prepared, text_so_far="".join(written or ())
                )
            except Exception as exc:  # noqa: BLE001 - the turn goes on; the next renewal may work
                logger.warning("chat lease not renewed session=%s: %s", prepared.session_id or "-", exc)
                continue
            if not held:
                logger.warning("chat lease lost session=%s (taken for dead)", prepared.session_id or "-")

    renewal = asyncio.ensure_future(renew())
    try:
        yield
    finally:
        renewal.cancel()


def _observe_upstream(*, upstream: UpstreamChoice, outcome: str, latency_ms: int, error_code: str = "") -> None:
    provider = upstream.provider.name
    metrics.upstream_duration.labels(provider=provider, outcome=outcome).observe(latency_ms / 1000)
    if error_code:
        metrics.upstream_errors.labels(provider=provider, error_code=error_code).inc()


def _name_turn_in(exc: BaseException, prepared: PreparedTurn) -> None:
    """The error's details name the kept question, so that the client can find it."""
    if isinstance(exc, ApiError) and not prepared.stateless:
        exc.details.update(session_id=prepared.session_id, user_message_id=prepared.user_message_id)


async def _end_failed(
    *, prepared: PreparedTurn, upstream: UpstreamChoice, exc: BaseException, latency_ms: int
) -> None:
    """The turn failed before upstream answered anything: record it and release the session."""
    error_code = _error_code_of(exc)
    _observe_upstream(upstream=upstream, outcome="failed", latency_ms=latency_ms, error_code=error_code)
    await _ending_step(
        end.chat_turn_fail, turn=prepared, error_code=error_code, latency_ms=latency_ms,
        outcome=_outcome_of(error_code, partial=False),
    )
    logger.warning("chat failed session=%s error=%s latency_ms=%d", prepared.session_id or "-", error_code, latency_ms)
    _name_turn_in(exc, prepared)


async def _end_answered(
    *, prepared: PreparedTurn, upstream: UpstreamChoice, completion: Completion, latency_ms: int,
    cut_short_by: str = "",
) -> Message | None:
    """Store the (possibly partial) answer. If storing fails, the tokens are recorded all the same
    and the session released, rather than left locked until the lease runs out. If the database
    fails for longer than the retries, the sweep closes the turn instead (sweep.py)."""
    _observe_upstream(
        upstream=upstream, outcome="partial" if cut_short_by else "success", latency_ms=latency_ms,
        error_code=cut_short_by,
    )
    # Labelled by the model the turn asked for (the one the key was allowed), not by whatever name
    # upstream reports back.
    metrics.record_tokens(
        model=prepared.model, prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens
    )
    outcome = _outcome_of(cut_short_by, partial=True) if cut_short_by else UsageRecord.Outcome.SUCCESS
    try:
        return await _ending_step(
            end.chat_turn_complete, turn=prepared, completion=completion, latency_ms=latency_ms,
            cut_short_by=cut_short_by, outcome=outcome,
        )
    except (SessionNotFound, db.OperationalError, db.InterfaceError):
        raise
    except Exception:
        await _ending_step(
            end.chat_turn_fail, turn=prepared, error_code=INTERNAL_ERROR, latency_ms=latency_ms, completion=completion
        )
        raise


def _result(
    *, prepared: PreparedTurn, upstream: UpstreamChoice, completion: Completion, answer: Message | None, started: float,
    latency_ms: int,
) -> ChatTurnResult:
    total_tokens = completion.prompt_tokens + completion.completion_tokens
    logger.info(
        "chat end session=%s tokens=%d prompt_tokens=%d completion_tokens=%d upstream_ms=%d total_ms=%d",
        prepared.session_id or "-", total_tokens, completion.prompt_tokens, completion.completion_tokens,
        latency_ms, _elapsed_ms(started),
    )
    return ChatTurnResult(
        session_id=prepared.session_id,
        message_id=answer.pk if answer else None,
        user_message_id=prepared.user_message_id,
        response_text=completion.text,
        model=completion.model,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        total_tokens_used=total_tokens,
        response_time=round(time.perf_counter() - started, 3),
        key_source=prepared.key_source,
        warnings=[*upstream.warnings, *prepared.warnings],
        finish_reason=completion.finish_reason,
        tool_calls=list(completion.tool_calls),
        logprobs=completion.logprobs,
        more_choices=completion.more_choices,
    )


async def _finish(
    *, prepared: PreparedTurn, upstream: UpstreamChoice, completion: Completion, started: float,
    upstream_started: float,
) -> ChatTurnResult:
    """A turn upstream answered in full: store the answer and say what it cost."""
    latency_ms = _elapsed_ms(upstream_started)
    answer = await _end_answered(prepared=prepared, upstream=upstream, completion=completion, latency_ms=latency_ms)
    return _result(
        prepared=prepared, upstream=upstream, completion=completion, answer=answer, started=started,
        latency_ms=latency_ms,
    )


async def chat_turn_run(
    *, api_key: ApiKey, upstream: UpstreamChoice, turn: ChatTurnInput | StatelessTurnInput
) -> ChatTurnResult:
    """One whole turn: store the question, ask the model, store the answer.

    Raises the ApiError of whatever failed; after an upstream failure the user's message is kept
    (failed) and the error's details name it, so that the client can find it.
    """
    started = time.perf_counter()
    prepared, upstream = await _begin(api_key=api_key, upstream=upstream, turn=turn)
    upstream_started = time.perf_counter()
    try:
        try:
            with _running_turn():
                async with asyncio.timeout(upstream_deadline_seconds()), _kept_alive(prepared):
                    completion = await upstream.provider.complete(prepared.completion_request())
        except TimeoutError:
            raise UpstreamTimeout() from None
    except BaseException as exc:
        await _end_failed(prepared=prepared, upstream=upstream, exc=exc, latency_ms=_elapsed_ms(upstream_started))
        raise
    return await _finish(prepared=prepared, upstream=upstream, completion=completion, started=started,
                         upstream_started=upstream_started)


def _partial_completion(prepared: PreparedTurn, text: str, written: str) -> Completion:
    """What a stream cut short generated, by our own count: upstream reports usage only at the end.
    `text` is the answer's text (what is stored); `written`, all it wrote, tool calls' pieces too
    (what is counted: a tool call cut short is not stored, but it was written, and paid for)."""
    return Completion(
        text=text,
        model=prepared.model,
        prompt_tokens=prepared.prompt.prompt_tokens,
        completion_tokens=tokens.count_text_tokens(written, model=prepared.model),
        usage_estimated=True,
        finish_reason=None,
    )


def _written(piece: StreamDelta) -> str:
    """All a piece of a stream wrote: its text, and its tool calls' names and arguments."""
    if not piece.tool_calls:
        return piece.text
    function_pieces = (call.get("function") or {} for call in piece.tool_calls)
    return piece.text + "".join((f.get("name") or "") + (f.get("arguments") or "") for f in function_pieces)


async def chat_turn_stream(
    *, api_key: ApiKey, upstream: UpstreamChoice, turn: ChatTurnInput | StatelessTurnInput
) -> AsyncIterator[StreamDelta | ChatTurnResult]:
    """One turn, answered piece by piece: `StreamDelta`s, then the `ChatTurnResult`.

    Until the first delta is yielded, a failure raises its ApiError like `chat_turn_run` does (the
    caller can still answer with a status code); after it, the ApiError ends the iteration, with
    what was generated stored as an incomplete answer. If the consumer stops early (the client
    went away), upstream is closed at once and the partial answer is stored the same way.
    """
    started = time.perf_counter()
    prepared, upstream = await _begin(api_key=api_key, upstream=upstream, turn=turn)
    upstream_started = time.perf_counter()
    # A deadline per read rather than one `asyncio.timeout` around the loop: this generator is
    # suspended at each yield while its consumer runs, and a timeout firing then would cancel the
    # consumer, not the upstream read.
    deadline = asyncio.get_running_loop().time() + upstream_deadline_seconds()
    pieces = upstream.provider.stream(prepared.completion_request())
    # The answer's text, and everything written (tool calls' pieces too): what a cut-short answer
    # stores, and what it is counted by (the lease's renewals count it too, for the sweep).
    parts: list[str] = []
    written: list[str] = []
    completion: Completion | None = None
    metrics.active_streams.inc()
    try:
        with _running_turn():
            async with _kept_alive(prepared, written):
                while completion is None:
                    try:
                        async with asyncio.timeout_at(deadline):
                            piece = await anext(pieces)
                    except TimeoutError:
                        raise UpstreamTimeout() from None
                    except StopAsyncIteration:
                        # A provider's stream always ends with its Completion; this one broke off.
                        raise UpstreamBadResponse() from None
                    if isinstance(piece, Completion):
                        completion = piece
                    else:
                        parts.append(piece.text)
                        written.append(_written(piece))
                        yield piece
    except BaseException as exc:
        metrics.active_streams.dec()
        # Stop reading upstream now (closing its response), not when the generator is collected.
        await pieces.aclose()
        latency_ms = _elapsed_ms(upstream_started)
        if not written:
            await _end_failed(prepared=prepared, upstream=upstream, exc=exc, latency_ms=latency_ms)
            raise
        cut_short_by = _error_code_of(exc)
        await _end_answered(
            prepared=prepared, upstream=upstream,
            completion=_partial_completion(prepared, "".join(parts), "".join(written)),
            latency_ms=latency_ms,
            cut_short_by=cut_short_by,
        )
        logger.warning(
            "chat cut short session=%s error=%s latency_ms=%d", prepared.session_id or "-", cut_short_by, latency_ms
        )
        _name_turn_in(exc, prepared)
        raise
    metrics.active_streams.dec()
    await pieces.aclose()
    yield await _finish(prepared=prepared, upstream=upstream, completion=completion, started=started,
                        upstream_started=upstream_started)
