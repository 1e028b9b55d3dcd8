"""Running a chat turn end to end, answered whole (`chat_turn_run`) or streamed (`chat_turn_stream`).

Both wrap the three steps of steps.py (begin, the upstream call with no transaction
open, complete or fail) and guarantee the same things however a turn ends — an upstream
error, a timeout, the client going away, a bug:
- the session's lease is released;
- the user's message is kept, with its status (never left pending);
- the call is recorded exactly once, with the tokens upstream reported or, when an answer
  was cut short, our own count of what was generated (marked estimated);
- no answer is invented: a streamed answer cut short is stored as it was, marked incomplete.

The database steps run in threads (sync_to_async); the ones that end a turn are shielded from
cancellation, so that a client who disconnects cannot leave a turn half-written.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from chat import tokens
from chat.exceptions import SessionNotFound, UpstreamBadResponse, UpstreamTimeout
from chat.models import ApiKey, Message
from chat.providers import Completion, StreamDelta
from chat.sessions.lease import upstream_deadline_seconds
from chat.turns import metrics, steps
from chat.turns.steps import ChatTurnInput, PreparedTurn, StatelessTurnInput
from chat.upstreams.choice import UpstreamChoice
from llmserver.db import in_thread
from llmserver.http.errors import ApiError

logger = logging.getLogger(__name__)

CLIENT_DISCONNECTED = "client_disconnected"
INTERNAL_ERROR = "internal_error"


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


def _elapsed_ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


def _error_code_of(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return exc.error_code
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return CLIENT_DISCONNECTED
    return INTERNAL_ERROR


async def _begin(
    *, api_key: ApiKey, upstream: UpstreamChoice, turn: ChatTurnInput | StatelessTurnInput
) -> PreparedTurn:
    """Step 1 in a thread. If the client goes away meanwhile, the write goes on regardless: wait
    for it, then end the turn so that the session is not left locked."""
    step = steps.chat_turn_begin if isinstance(turn, ChatTurnInput) else steps.stateless_turn_begin
    begin = asyncio.ensure_future(in_thread(step)(api_key=api_key, turn=turn, key_source=upstream.key_source))
    try:
        prepared = await asyncio.shield(begin)
    except asyncio.CancelledError:
        try:
            prepared = await begin
        except ApiError:
            raise asyncio.CancelledError from None
        await in_thread(steps.chat_turn_fail)(turn=prepared, error_code=CLIENT_DISCONNECTED, latency_ms=0)
        raise
    logger.info(
        "chat start session=%s key=%s model=%s key_source=%s history_messages=%d prompt_tokens=%d",
        prepared.session_id or "-", api_key.key_id, prepared.model, prepared.key_source,
        prepared.prompt.history_used, prepared.prompt.prompt_tokens,
    )
    return prepared


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
    await asyncio.shield(
        in_thread(steps.chat_turn_fail)(turn=prepared, error_code=error_code, latency_ms=latency_ms)
    )
    logger.warning("chat failed session=%s error=%s latency_ms=%d", prepared.session_id or "-", error_code, latency_ms)
    _name_turn_in(exc, prepared)


async def _end_answered(
    *, prepared: PreparedTurn, upstream: UpstreamChoice, completion: Completion, latency_ms: int,
    cut_short_by: str = "",
) -> Message | None:
    """Store the (possibly partial) answer. If storing fails, the tokens are recorded all the same
    and the session released, rather than left locked until the lease runs out."""
    _observe_upstream(
        upstream=upstream, outcome="partial" if cut_short_by else "success", latency_ms=latency_ms,
        error_code=cut_short_by,
    )
    metrics.record_tokens(
        model=completion.model, prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens
    )
    try:
        return await asyncio.shield(
            in_thread(steps.chat_turn_complete)(
                turn=prepared, completion=completion, latency_ms=latency_ms, cut_short_by=cut_short_by
            )
        )
    except SessionNotFound:
        raise
    except Exception:
        await asyncio.shield(
            in_thread(steps.chat_turn_fail)(
                turn=prepared, error_code=INTERNAL_ERROR, latency_ms=latency_ms, completion=completion
            )
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
    prepared = await _begin(api_key=api_key, upstream=upstream, turn=turn)
    upstream_started = time.perf_counter()
    try:
        try:
            async with asyncio.timeout(upstream_deadline_seconds()):
                completion = await upstream.provider.complete(prepared.completion_request())
        except TimeoutError:
            raise UpstreamTimeout() from None
    except BaseException as exc:
        await _end_failed(prepared=prepared, upstream=upstream, exc=exc, latency_ms=_elapsed_ms(upstream_started))
        raise
    return await _finish(prepared=prepared, upstream=upstream, completion=completion, started=started,
                         upstream_started=upstream_started)


def _partial_completion(prepared: PreparedTurn, text: str) -> Completion:
    """What a stream cut short generated, by our own count: upstream reports usage only at the end."""
    return Completion(
        text=text,
        model=prepared.model,
        prompt_tokens=prepared.prompt.prompt_tokens,
        completion_tokens=tokens.count_text_tokens(text, model=prepared.model),
        usage_estimated=True,
        finish_reason=None,
    )


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
    prepared = await _begin(api_key=api_key, upstream=upstream, turn=turn)
    upstream_started = time.perf_counter()
    # A deadline per read rather than one `asyncio.timeout` around the loop: this generator is
    # suspended at each yield while its consumer runs, and a timeout firing then would cancel the
    # consumer, not the upstream read.
    deadline = asyncio.get_running_loop().time() + upstream_deadline_seconds()
    pieces = upstream.provider.stream(prepared.completion_request())
    parts: list[str] = []
    completion: Completion | None = None
    metrics.active_streams.inc()
    try:
        try:
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
                    yield piece
        finally:
            metrics.active_streams.dec()
            # Stop reading upstream now (closing its response), not when the generator is collected.
            await pieces.aclose()
    except BaseException as exc:
        latency_ms = _elapsed_ms(upstream_started)
        if not parts:
            await _end_failed(prepared=prepared, upstream=upstream, exc=exc, latency_ms=latency_ms)
            raise
        cut_short_by = _error_code_of(exc)
        await _end_answered(
            prepared=prepared, upstream=upstream, completion=_partial_completion(prepared, "".join(parts)),
            latency_ms=latency_ms,
            cut_short_by=cut_short_by,
        )
        logger.warning(
            "chat cut short session=%s error=%s latency_ms=%d", prepared.session_id or "-", cut_short_by, latency_ms
        )
        _name_turn_in(exc, prepared)
        raise
    yield await _finish(prepared=prepared, upstream=upstream, completion=completion, started=started,
                        upstream_started=upstream_started)
