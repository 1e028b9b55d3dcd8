"""Any OpenAI-compatible upstream (OpenAI, vLLM, Ollama, llama.cpp, …) through the official SDK.

Two measured costs shape this module:
- the SDK's `chat.completions.create` walks the whole request body through its type transforms
  on every call (about 60% of a request's CPU with 20 history messages). Our body is already
  plain JSON-ready dicts, so it goes through the SDK's documented low-level `client.post`, which
  sends it as it is while keeping the SDK's timeouts, bounded retries and error classes;
- building pydantic models for the response is skipped the same way: we read the raw JSON.

Retries are ours, not the SDK's (its client is built with max_retries=0): the SDK also retries
after a read timeout and after a connection that broke while the answer was arriving, and then
upstream may well have written (and billed) an answer already; asking again would pay for it
twice and hold the worker for several timeouts. We ask again only when upstream certainly wrote
no answer: it answered with a retryable error status, or the connection failed before the request
reached it. Never once a byte of a stream was read (that happens after `post` returns).
"""

import asyncio
import email.utils
import hashlib
import logging
import math
import random
import time
import weakref
from collections.abc import AsyncIterator
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

import httpx2
import openai
from django.conf import settings
from django.utils.translation import gettext_lazy as _

from chat import tokens
from chat.exceptions import (
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamInterrupted,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from chat.providers.base import Completion, CompletionRequest, StreamDelta
from chat.providers.rejection import rejection_from
from chat.providers.stream import NOT_A_STREAM, RawChunks, ToolCallPieces, read_chunk
from llmserver.http.parsers import storable
from llmserver.http.request_id import REQUEST_ID_HEADER
from llmserver.logging import NO_REQUEST, current_request_id

logger = logging.getLogger(__name__)

# An httpx client (and its connection pool) belongs to the event loop that created it, so
# clients are kept per loop; under uvicorn there is one loop per worker process.
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], openai.AsyncOpenAI]]" = (
    weakref.WeakKeyDictionary()
)
# Connecting should be quick even when answering is slow: fail fast on an unreachable upstream.
MAX_CONNECT_TIMEOUT_SECONDS = 10.0
# Matches the model columns; a longer name reported by upstream is cut.
MAX_MODEL_NAME_LENGTH = 200
# Upstream's model lists, kept LLM_MODEL_LIST_SECONDS (per process: a miss costs one quick call),
# by (base URL, hash of the key).
_model_lists: dict[tuple[str | None, str], tuple[float, list[str]]] = {}
# Usage numbers whose sum is at or above this are not believed (it would overflow the token columns).
MAX_REPORTED_TOKENS = 2**31 - 1


# Statuses after which asking again is safe: upstream answered with an error, not with an answer.
RETRYABLE_STATUSES = frozenset({408, 409, 429})
# The wait before retry n is FIRST_RETRY_WAIT_SECONDS * 2**n, at most MAX_RETRY_WAIT_SECONDS, less
# up to a quarter at random (the SDK's own curve), or upstream's Retry-After when it sends one. A
# longer Retry-After is not waited out by a worker: the client gets the 429 and the wait instead.
FIRST_RETRY_WAIT_SECONDS = 0.5
MAX_RETRY_WAIT_SECONDS = 8.0
# The longest Retry-After passed on to a client (an hour): upstream's own may be absurd.
MAX_RETRY_AFTER_PASSED_ON = 3600.0
# Failures of the connection before the request was sent.
_NOTHING_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)


def _retry_after_seconds(headers: Any) -> float | None:
    """Upstream's wish, as the SDK reads it: `retry-after-ms`, then `retry-after` in seconds or as
    an HTTP date. None when it sent none or nonsense; a number too large for a float is infinite."""
    for name, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        try:
            seconds = float(headers.get(name, "")) / divisor
        except ValueError:
            continue
        return None if math.isnan(seconds) else seconds
    try:
        moment = email.utils.parsedate_to_datetime(headers.get("retry-after", ""))
    except (TypeError, ValueError):
        return None
    return (moment - datetime.now(dt_timezone.utc)).total_seconds() if moment.tzinfo else None


def retry_wait_seconds(exc: openai.OpenAIError, *, attempt: int) -> float | None:
    """How long to wait before asking again after `exc` on attempt `attempt` (0 first), or None
    when asking again is not safe or not worth a worker's wait."""
    if isinstance(exc, openai.APIStatusError):
        should_retry = exc.response.headers.get("x-should-retry")  # OpenAI's own verdict, when sent
        if should_retry == "false" or (
            should_retry != "true" and exc.status_code not in RETRYABLE_STATUSES and exc.status_code < 500
        ):
            return None
        retry_after = _retry_after_seconds(exc.response.headers)
        if retry_after is not None:
            return max(retry_after, 0) if retry_after <= MAX_RETRY_WAIT_SECONDS else None
    elif not (isinstance(exc, openai.APIConnectionError) and isinstance(exc.__cause__, _NOTHING_SENT)):
        return None
    return min(FIRST_RETRY_WAIT_SECONDS * 2**attempt, MAX_RETRY_WAIT_SECONDS) * (1 - 0.25 * random.random())


# Whose key a provider holds, for the sentence when upstream rejects it.
KEY_FROM_SERVER = "server"
KEY_FROM_CREDENTIAL = "credential"
KEY_FROM_CALLER = "caller"
_REJECTED_KEY_MESSAGES = {
    KEY_FROM_CALLER: _("The model provider rejected the upstream API key you sent (X-Upstream-Api-Key or api_key)."),
    KEY_FROM_CREDENTIAL: _(
        "The model provider rejected the upstream credential assigned to this API key; the operator has to check it."
    ),
}


def upstream_error_from(exc: Exception, *, key_origin: str = KEY_FROM_SERVER) -> UpstreamError:
    """Map the SDK's exceptions onto ours. Upstream's own error text is passed on only for a
    refused request, redacted (rejection.py): a 401's or a 403's can carry a fragment of the
    upstream key ("Incorrect API key provided: sk-ab***yz")."""
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamTimeout()
    if isinstance(exc, openai.APIConnectionError):
        if isinstance(exc.__cause__, _NOTHING_SENT):
            return UpstreamUnavailable()
        # Upstream got the request and the connection broke before its answer was whole.
        return UpstreamInterrupted(_(
            "The model provider's connection broke off before its answer arrived; the message was kept and can "
            "be retried."
        ))
    if isinstance(exc, openai.APIStatusError):
        details = {"upstream_status": exc.status_code}
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return UpstreamAuthFailed(_REJECTED_KEY_MESSAGES.get(key_origin), details=details)
        if isinstance(exc, openai.RateLimitError):
            retry_after = _retry_after_seconds(exc.response.headers) or 1
            return UpstreamRateLimited(details=details, retry_after=min(max(retry_after, 1), MAX_RETRY_AFTER_PASSED_ON))
        if exc.status_code in RETRYABLE_STATUSES:
            # Asked again already (retry_wait_seconds): passed on as they are, 408 and 409 would be
            # asked again by the client's SDK too. Upstream failed to answer: that is our 502/504.
            return UpstreamTimeout(details=details) if exc.status_code == 408 else UpstreamError(details=details)
        if 400 <= exc.status_code < 500:
            return rejection_from(exc)
        return UpstreamError(details=details)
    return UpstreamBadResponse()


class OpenAICompatibleProvider:
    name = "openai"

    def __init__(
        self, *, api_key: str, base_url: str | None, timeout: float, max_retries: int,
        key_origin: str = KEY_FROM_SERVER,
    ) -> None:
        """`key_origin` says whose key this is. A caller's own key (bring your own key) gets no
        cached client of its own, and errors speak of the key's owner."""
        # Local servers (vLLM, Ollama) often need no key, but the SDK insists on one.
        self._api_key = api_key or "no-key-configured"
        self._base_url = base_url or None
        self._timeout_seconds = timeout
        self._max_retries = max_retries
        self._key_origin = key_origin
        self._user_provided_key = key_origin == KEY_FROM_CALLER

    def _client(self) -> openai.AsyncOpenAI:
        """A client with this provider's key. Clients (and their connection pools) are cached per
        event loop and configuration, under a hash of the server's own keys; a caller's key gets a
        light copy of the shared client (same pool) that lives for this request only."""
        per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
        key_fingerprint = None if self._user_provided_key else hashlib.sha256(self._api_key.encode()).hexdigest()
        config = (key_fingerprint, self._base_url, self._timeout_seconds)
        client = per_loop.get(config)
        if client is None:
            client = openai.AsyncOpenAI(
                api_key=self._api_key if key_fingerprint else "set-per-request",
                base_url=self._base_url,
                timeout=openai.Timeout(
                    self._timeout_seconds, connect=min(self._timeout_seconds, MAX_CONNECT_TIMEOUT_SECONDS)
                ),
                max_retries=0,
            )
            per_loop[config] = client
        if self._user_provided_key:
            return client.with_options(api_key=self._api_key)
        return client

    async def _post(self, **kwargs: Any) -> Any:
        """`client.post("/chat/completions", ...)`, asked again up to max_retries times where that is
        safe (see the module's docstring)."""
        client = self._client()
        for attempt in range(self._max_retries + 1):
            try:
                return await client.post("/chat/completions", **kwargs)
            except openai.OpenAIError as exc:
                wait = retry_wait_seconds(exc, attempt=attempt) if attempt < self._max_retries else None
                if wait is None:
                    raise
                logger.info("upstream retry %d of %d in %.2f s after %s", attempt + 1, self._max_retries, wait,
                            type(exc).__name__)
                await asyncio.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _error(self, exc: Exception) -> UpstreamError:
        return upstream_error_from(exc, key_origin=self._key_origin)

    async def list_models(self) -> list[str] | None:
        """The ids of the models upstream says it serves (GET /models), asked at most once every
        LLM_MODEL_LIST_SECONDS per upstream and key; None when it could not say (unreachable, refused,
        or an answer that is not a model list)."""
        cache_key = (self._base_url, hashlib.sha256(self._api_key.encode()).hexdigest())
        cached = _model_lists.get(cache_key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < settings.LLM_MODEL_LIST_SECONDS:
            return cached[1]
        try:
            response = await self._client().get("/models", cast_to=httpx2.Response)
            entries = response.json()["data"]
            models = [entry["id"] for entry in entries if isinstance(entry.get("id"), str) and entry["id"].strip()]
        except (openai.OpenAIError, httpx2.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            return None
        models = [model[:MAX_MODEL_NAME_LENGTH] for model in models]
        _model_lists[cache_key] = (now, models)
        return models

    async def key_is_valid(self) -> bool | None:
        """One cheap call (list models) to check the key: True if upstream accepts it, False if it
        rejects it, None if that could not be told (upstream down, timed out, …)."""
        try:
            await self._client().get("/models", cast_to=httpx2.Response)
        except (openai.AuthenticationError, openai.PermissionDeniedError):
            return False
        except openai.OpenAIError:
            return None
        return True

    @staticmethod
    def _body(request: CompletionRequest) -> dict[str, Any]:
        body = {**request.options, "model": request.model, "messages": request.messages,
                "temperature": request.temperature}
        # max_completion_tokens, when the client sent it, is the limit (and OpenAI refuses both).
        if request.max_tokens is not None and "max_completion_tokens" not in request.options:
            body["max_tokens"] = request.max_tokens
        return body

    async def complete(self, request: CompletionRequest) -> Completion:
        try:
            response = await self._post(cast_to=httpx2.Response, body=self._body(request), options=_request_options())
            data = response.json()
        except openai.OpenAIError as exc:
            raise self._error(exc) from exc
        except (ValueError, httpx2.HTTPError) as exc:
            # Malformed JSON, or a body cut off after the headers arrived.
            raise UpstreamBadResponse() from exc
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            finish_reason = choice.get("finish_reason")
            tool_calls = _whole_tool_calls(choice["message"].get("tool_calls"))
            more_choices = tuple(data["choices"][1:])
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise UpstreamBadResponse(_("The model provider's answer has no message in it.")) from exc
        if not isinstance(text, str) or not isinstance(finish_reason, (str, type(None))):
            raise UpstreamBadResponse(_("The model provider's answer has no message in it."))
        return _with_usage(
            request, text=storable(text), model=_model_name(data.get("model"), request), usage=data.get("usage"),
            finish_reason=finish_reason, tool_calls=tool_calls, logprobs=choice.get("logprobs"),
            more_choices=more_choices,
        )

    async def stream(self, request: CompletionRequest) -> AsyncIterator[StreamDelta | Completion]:
        """See chat/providers/stream.py for what is read, and how an answer that is not whole is told
        apart from one that is: a stream that stops with no `finish_reason` and no `[DONE]` was cut
        off (UpstreamInterrupted), and one that said nothing at all is UpstreamBadResponse."""
        body = {**self._body(request), "stream": True, "stream_options": {"include_usage": True}}
        parts: list[str] = []
        tool_calls = ToolCallPieces()
        usage: dict[str, Any] | None = None
        model = request.model
        finish_reason = None
        try:
            stream = await self._post(
                cast_to=dict, body=body, stream=True, stream_cls=RawChunks, options=_request_options()
            )
            async with stream:
                async for chunk in stream:
                    content = read_chunk(chunk)
                    model = _model_name(content.model, request) if content.model is not None else model
                    usage = content.usage or usage
                    finish_reason = content.finish_reason or finish_reason
                    if content.text or content.tool_calls:
                        text = storable(content.text)
                        parts.append(text)
                        tool_calls.add(content.tool_calls)
                        yield StreamDelta(text=text, model=model, tool_calls=content.tool_calls,
                                          logprobs=content.logprobs)
        except openai.APITimeoutError as exc:
            # A read that timed out mid-stream is a timeout, whatever arrived before it.
            raise UpstreamTimeout() from exc
        except openai.APIConnectionError as exc:
            # Once chunks have arrived, a broken connection is an answer cut off, not an upstream down.
            raise (UpstreamInterrupted() if parts else self._error(exc)) from exc
        except openai.OpenAIError as exc:
            raise self._error(exc) from exc
        except httpx2.TimeoutException as exc:
            raise UpstreamTimeout() from exc
        except httpx2.TransportError as exc:
            raise (UpstreamInterrupted() if parts else UpstreamUnavailable()) from exc
        except httpx2.HTTPError as exc:
            raise UpstreamBadResponse() from exc
        if finish_reason is None and not parts:
            # Nothing said, not even how it ended ([DONE] alone, or no event at all).
            raise UpstreamBadResponse(NOT_A_STREAM)
        if finish_reason is None and not stream.done:
            # It stopped before its end: what arrived is kept, marked incomplete, never as whole.
            raise UpstreamInterrupted()
        yield _with_usage(request, text="".join(parts), model=model, usage=usage, finish_reason=finish_reason,
                          tool_calls=tool_calls.whole())


def _request_options() -> dict[str, Any]:
    """The request's id goes upstream too, so that one id follows a chat into the provider's logs."""
    request_id = current_request_id.get()
    return {"headers": {REQUEST_ID_HEADER: request_id}} if request_id != NO_REQUEST else {}


def _model_name(reported: Any, request: CompletionRequest) -> str:
    """The model upstream says answered, if it says so sensibly; else the one asked for."""
    if isinstance(reported, str) and reported.strip():
        return reported[:MAX_MODEL_NAME_LENGTH]
    return request.model


def _whole_tool_calls(calls: Any) -> tuple[dict[str, Any], ...]:
    """An answer's tool calls, checked to be what OpenAI's format says (TypeError otherwise), with
    only the fields that are stored and replayed."""
    if calls is None:
        return ()
    if not isinstance(calls, list):
        raise TypeError("tool_calls is not a list")
    whole = []
    for call in calls:
        function = call["function"]
        if not all(isinstance(value, str) for value in (call["id"], function["name"], function["arguments"])):
            raise TypeError("a tool call's id, name or arguments is not a string")
        whole.append({"id": storable(call["id"]), "type": "function", "function": {
            "name": storable(function["name"]), "arguments": storable(function["arguments"])}})
    return tuple(whole)


def _with_usage(
    request: CompletionRequest, *, text: str, model: str, usage: dict[str, Any] | None, finish_reason: str | None,
    **answer: Any,
) -> Completion:
    """A Completion with upstream's usage when it reported one, else our own exact count."""
    try:
        prompt_tokens = usage["prompt_tokens"]  # type: ignore[index]
        completion_tokens = usage["completion_tokens"]  # type: ignore[index]
        estimated = not (
            all(isinstance(count, int) and not isinstance(count, bool) and count >= 0
                for count in (prompt_tokens, completion_tokens))
            # The two and their sum must fit the token columns.
            and prompt_tokens + completion_tokens < MAX_REPORTED_TOKENS
        )
    except (KeyError, TypeError):
        estimated = True
    if estimated:
        prompt_tokens = tokens.count_prompt_tokens(request.messages, model=request.model)
        completion_tokens = tokens.count_text_tokens(text, model=request.model) + sum(
            tokens.count_text_tokens(call["function"]["name"] + call["function"]["arguments"], model=request.model)
            for call in answer.get("tool_calls", ())
        )
        if request.options.get("tools"):
            prompt_tokens += tokens.count_tools_tokens(request.options["tools"], model=request.model)
    return Completion(
        text=text,
        model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        usage_estimated=estimated,
        finish_reason=finish_reason,
        **answer,
    )
