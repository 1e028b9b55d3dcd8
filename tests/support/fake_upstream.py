"""A fake OpenAI-compatible upstream for tests and benchmarks.

``FakeUpstream`` serves a raw ASGI application with uvicorn (uvloop + httptools) on
its own thread and event loop, so synchronous tests, async tests and benchmarks can all
talk to it over real TCP on 127.0.0.1. It holds thousands of concurrent slow
connections: a waiting request costs two small asyncio tasks and no thread.

Endpoints (OpenAI wire format):

* ``POST /v1/chat/completions`` -- ``chat.completion`` JSON, or with ``"stream": true``
  a ``text/event-stream`` of ``chat.completion.chunk`` events, one per word of the reply
  (the first also carries ``delta.role = "assistant"``), then a chunk with
  ``finish_reason = "stop"``, then (if ``stream_options.include_usage``) a chunk with
  ``choices: []`` and ``usage``, then ``data: [DONE]``. A body that is not a JSON object
  with a ``model`` string gets 400 without consuming a behaviour.
* ``GET /v1/models`` -- ``{"object": "list", "data": [...]}`` built from ``models``.
* ``GET /stats`` -- what the fake did, as JSON (``FakeUpstream.stats``): how many chat
  completions it received, which behaviour each got, and the tokens it reported. With
  ``?calls=1`` it adds one entry per chat completion. Not part of OpenAI's API: the soak
  benchmark (bench/soak.py) compares these figures with the server's usage records.
* anything else -- 404 with OpenAI's error shape.
* with ``api_key`` set, a wrong ``Authorization: Bearer`` gets 401 on every endpoint
  (``/stats`` included).

What each chat completion does is decided by a FIFO of ``Behaviour`` objects
(``enqueue``); when the queue is empty the request gets a normal success, or, with
``fail_rate`` above 0, that fraction of requests (drawn at random, reproducibly with
``seed``) gets one of the ``FAULTS``, each as likely as the others.

Run standalone (benchmarks)::

    python -m tests.support.fake_upstream --host 127.0.0.1 --port 0 --latency-ms 50 [--fail-rate 0.05 --seed 1]

prints ``listening on http://127.0.0.1:<port>/v1`` and serves until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import random
import re
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal

import uvicorn

__all__ = ["FAULTS", "Behaviour", "ChatCall", "FakeUpstream", "RecordedRequest", "main"]

_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_Headers = list[tuple[bytes, bytes]]

DEFAULT_REPLY = "Hello from the fake upstream."
DEFAULT_MODELS: tuple[str, ...] = ("fake-model",)

# A piece is a word plus the whitespace before it; trailing whitespace of the reply sticks
# to the last piece, so the streamed pieces concatenate back to exactly the reply.
_WORD_PIECE = re.compile(r"\s*\S+(?:\s+$)?")


@dataclass(frozen=True, kw_only=True)
class Behaviour:
    """How the fake answers one chat completion. The defaults are a normal success.

    Precedence: ``hang``, then ``status != 200``, then ``malformed``, then ``body``, then
    success (which ``drop_after_words`` may cut short). ``delay`` applies before any of the
    last four.

    Attributes:
        reply: Assistant text; ``None`` means the server's ``default_reply``.
        usage: ``(prompt_tokens, completion_tokens)`` to report. ``None`` reports no usage
            at all: no ``usage`` key in a completion, no usage chunk in a stream even when
            ``include_usage`` was asked for. ``"default"`` counts: prompt_tokens = the
            number of whitespace-separated words across all request message contents
            (string contents, and the ``text`` of list-of-parts contents) + 3 per message;
            completion_tokens = the number of whitespace-separated words in the reply.
        status: HTTP status. Anything but 200 answers ``error_body`` as JSON, also for
            streaming requests (as OpenAI does: errors come before the stream starts).
        error_body: JSON body of an error; ``None`` means OpenAI's usual body for
            ``status`` (400 invalid_request_error, 401 invalid_api_key,
            404 model_not_found, 429 rate_limit_exceeded, 5xx server_error).
        headers: Extra response headers, e.g. ``{"retry-after": "7"}``; sent with every
            kind of response.
        delay: Seconds before the response headers; ``None`` means the server's ``latency``.
        hang: Accept the request and never answer, until the client disconnects (counted
            in ``disconnects``) or the server stops.
        malformed: 200 whose body does not parse. Non-streaming: ``application/json`` with
            the body ``{"id": "cmpl-broken", "choices": [``. Streaming:
            ``text/event-stream`` with one ``data:`` event carrying that text, then the
            stream ends (a non-SSE body would make SDKs see an empty stream, not an error).
        body: A 200 JSON body sent as it is instead of a completion: valid JSON that is not
            what an OpenAI-compatible server should send.
        drop_after_words: Cut the connection mid-response. Streaming: send this many word
            chunks (at most all of them), then close the TCP connection without the final
            chunk, usage or ``[DONE]``. Non-streaming: send headers with the full body's
            Content-Length and half the body (the number itself is not used), then close.
        word_delay: Seconds to wait before each streamed word chunk after the first.
        events: For a streamed request: these server-sent events instead of the answer's, as
            they are (a dict is sent as its JSON, a string as the event's data), each after
            ``word_delay`` but the first; then the stream ends, with no ``[DONE]`` unless one is
            among them. For the chunks an OpenAI-compatible server should not send.
        tool_calls: The answer calls these tools, given as ``(name, arguments JSON)``: the message
            has ``tool_calls`` (ids ``call_fake<serial>_<n>``), ``reply`` as its content (``""``
            means ``null``), and ``finish_reason`` is ``"tool_calls"``. Streamed as OpenAI does:
            one chunk with each call's id and name, then its arguments in two fragments.
    """

    reply: str | None = None
    usage: tuple[int, int] | None | Literal["default"] = "default"
    status: int = 200
    error_body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float | None = None
    hang: bool = False
    malformed: bool = False
    body: dict[str, Any] | None = None
    drop_after_words: int | None = None
    word_delay: float = 0.0
    events: tuple[dict[str, Any] | str, ...] | None = None
    tool_calls: tuple[tuple[str, str], ...] = ()


_SUCCESS = Behaviour()

# The faults ``fail_rate`` draws from, by the name ``stats()`` counts them under: the ways a
# real upstream fails. Each maps to one of the server's upstream error codes (with no retries):
FAULTS: dict[str, Behaviour] = {
    "http_500": Behaviour(status=500),  # upstream_error
    "http_502": Behaviour(status=502),  # upstream_error
    "http_503": Behaviour(status=503),  # upstream_error
    "http_429": Behaviour(status=429, headers={"retry-after": "1"}),  # upstream_rate_limited
    # Half the body (non-streaming), or two words of the stream, then the connection closes.
    "dropped": Behaviour(drop_after_words=2),
    "malformed": Behaviour(malformed=True),  # upstream_bad_response
    # Never answers: the server's own timeout ends it (upstream_timeout).
    "hung": Behaviour(hang=True),
}
# How ``stats()`` names the other behaviours.
SUCCESS = "success"
QUEUED = "queued"


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the fake received it.

    Attributes:
        method: e.g. ``"POST"``.
        path: URL path without the query string, e.g. ``"/v1/chat/completions"``.
        headers: Request headers with lower-case names; repeated headers joined by ", ".
        json: The parsed JSON body, or ``None`` if the body was empty or not JSON.
        received_at: ``time.monotonic()`` when the request arrived; comparable with
            ``time.monotonic()`` taken by the test in the same process.
    """

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    received_at: float


@dataclass(frozen=True)
class ChatCall:
    """How one chat completion ended, as ``stats(calls=True)`` lists it.

    Attributes:
        request_id: The request's ``X-Request-Id`` header, or ``None`` without one.
        behaviour: ``"success"``, the name of a fault from ``FAULTS``, or ``"queued"``
            for a behaviour taken from the queue.
        usage: ``(prompt_tokens, completion_tokens)`` of the usage object sent, or ``None``
            when none was sent in full (an error, a fault, a stream without
            ``include_usage``, a response cut short).
        client_left: The client went away before the response was complete.
    """

    request_id: str | None
    behaviour: str
    usage: tuple[int, int] | None
    client_left: bool


class _AbortConnection(Exception):
    """Raised out of the ASGI app once the response has started.

    uvicorn answers an exception after ``http.response.start`` by closing the transport,
    so the client sees the body end early (httpx: ``RemoteProtocolError``). That is the
    only way a raw ASGI app can cut a connection under uvicorn.
    """


def _drop_deliberate_aborts(record: logging.LogRecord) -> bool:
    """Logging filter: uvicorn logs every exception leaving the app at ERROR with a
    traceback; a deliberate ``_AbortConnection`` is not an error and would only drown
    real ones."""
    return not (record.exc_info and isinstance(record.exc_info[1], _AbortConnection))


class _Exchange:
    """The response side of one request; remembers whether headers went out, because
    after that the only way to fail is to cut the connection."""

    __slots__ = ("_send", "started")

    def __init__(self, send: _Send) -> None:
        self._send = send
        self.started = False

    async def start(self, status: int, headers: _Headers) -> None:
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        # Set only after the await: if a cancellation interrupts uvicorn's flow-control
        # wait, nothing was written and a clean error response is still possible.
        self.started = True

    async def body(self, data: bytes, *, more: bool = False) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def json(self, status: int, payload: object, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        data = _dumps(payload)
        await self.start(
            status,
            [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers],
        )
        await self.body(data)


def _dumps(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _error(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _default_error_body(status: int, model: str) -> dict[str, Any]:
    """OpenAI's usual error body for ``status``."""
    if status == 400:
        return _error("Invalid request (simulated by the fake upstream).", "invalid_request_error")
    if status == 401:
        return _error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
    if status == 404:
        return _error(
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
            "model",
        )
    if status == 429:
        return _error(f"Rate limit reached for {model} (simulated).", "requests", "rate_limit_exceeded")
    if status in (500, 502, 503):
        return _error("The server had an error while processing your request.", "server_error")
    return _error(f"Simulated upstream error (HTTP {status}).", "api_error")


def _content_words(content: object) -> int:
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):
        texts = [part.get("text") for part in content if isinstance(part, dict)]
        return sum(len(text.split()) for text in texts if isinstance(text, str))
    return 0


def _default_usage(messages: object, reply: str) -> tuple[int, int]:
    """The ``usage="default"`` rule documented on ``Behaviour.usage``."""
    prompt = 0
    if isinstance(messages, list):
        words = sum(_content_words(m.get("content")) for m in messages if isinstance(m, dict))
        prompt = words + 3 * len(messages)
    return prompt, len(reply.split())


def _usage_object(usage: tuple[int, int]) -> dict[str, int]:
    prompt, completion = usage
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _read_body(receive: _Receive) -> bytes | None:
    """The whole request body, or ``None`` if the client went away first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _wait_for_disconnect(receive: _Receive) -> None:
    """Return when uvicorn reports ``http.disconnect``. Once the body is read, uvicorn's
    ``receive`` only returns on disconnect or after the response completed; the caller
    tells the two apart by checking whether its response finished first."""
    while (await receive())["type"] != "http.disconnect":
        pass


class FakeUpstream:
    """A fake OpenAI-compatible server on its own thread; see the module docstring.

    Thread-safety: ``enqueue``, ``reset``, ``requests`` and the counters may be used from
    any thread while the server runs. ``latency``, ``default_reply`` and ``models`` are
    plain attributes read at each request; assigning them takes effect for the next one.

    Attributes:
        latency: Seconds every chat completion waits before answering unless its
            ``Behaviour.delay`` says otherwise. Other endpoints answer at once.
        fail_rate: The fraction (0 to 1) of chat completions, beyond those the queue
            decides, that get a fault from ``FAULTS`` instead of a success.
        default_reply: The reply of a ``Behaviour`` whose ``reply`` is ``None``.
        models: Ids listed by ``GET /v1/models``.
        requests: Every request received (all endpoints, including rejected ones), in
            arrival order.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        default_reply: str = DEFAULT_REPLY,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        fail_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        """Configure, without starting. With ``api_key``, every request whose
        ``Authorization`` header is not ``Bearer <api_key>`` (or of a key added to
        ``extra_keys``) gets 401 invalid_api_key. ``seed`` makes the faults ``fail_rate``
        draws the same on every run (for the same order of requests)."""
        self.api_key = api_key
        # More keys accepted besides ``api_key`` (callers' own keys in bring-your-own-key tests).
        self.extra_keys: set[str] = set()
        self.host = host
        self.latency = latency
        self.fail_rate = fail_rate
        self.default_reply = default_reply
        self.models: list[str] = list(DEFAULT_MODELS)
        self.requests: list[RecordedRequest] = []
        self._initial_latency = latency
        self._initial_fail_rate = fail_rate
        self._initial_reply = default_reply
        self._seed = seed
        self._random = random.Random(seed)
        self._calls: list[ChatCall] = []
        self._chat_completions = 0
        self._requested_port = port
        self._port: int | None = None
        self._lock = threading.Lock()
        self._queue: deque[Behaviour] = deque()
        self._active = 0
        self._max_concurrent = 0
        self._disconnects = 0
        self._ids = itertools.count(1)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Only touched on the server's loop: the response tasks that stop() must release.
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = False

    # ----- lifecycle -------------------------------------------------------------------

    def start(self) -> FakeUpstream:
        """Start serving; return once the socket is listening. Raises ``RuntimeError`` if
        already running or if uvicorn could not bind (its log says why)."""
        if self._thread is not None:
            raise RuntimeError("FakeUpstream is already running")
        config = uvicorn.Config(
            self._app,
            host=self.host,
            port=self._requested_port,
            log_level="warning",
            lifespan="off",
            loop="uvloop",
            http="httptools",
            ws="none",
            interface="asgi3",
            access_log=False,
            proxy_headers=False,
            server_header=False,
            # Safety net only: stop() releases every handler itself, so shutdown normally
            # finishes well inside this.
            timeout_graceful_shutdown=2,
        )
        # After Config(): its constructor (re)configures uvicorn's loggers.
        logging.getLogger("uvicorn.error").addFilter(_drop_deliberate_aborts)
        self._stopping = False
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, args=(config,), name="fake-upstream", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not self._server.started:
            if not self._thread.is_alive():
                self._thread = None
                raise RuntimeError(f"fake upstream could not start on {self.host}:{self._requested_port}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("fake upstream did not start within 10 s")
            time.sleep(0.005)
        self._port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Stop serving and join the thread, normally within ~0.3 s. Requests still in
        progress are released: one whose headers are not sent yet gets 503 with
        ``connection: close``; a response already streaming is cut. Idempotent."""
        thread, server, loop = self._thread, self._server, self._loop
        if thread is None or server is None:
            return
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._release_handlers)
            except RuntimeError:
                pass  # The loop already closed: uvicorn exited on its own, nothing to release.
        server.should_exit = True
        thread.join(timeout=10.0)
        if thread.is_alive():
            raise RuntimeError("fake upstream did not stop within 10 s")
        self._thread = self._server = self._loop = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, config: uvicorn.Config) -> None:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(self._serve())

    async def _serve(self) -> None:
        assert self._server is not None
        self._loop = asyncio.get_running_loop()
        await self._server.serve()

    def _release_handlers(self) -> None:
        self._stopping = True
        for task in self._in_flight:
            task.cancel()

    # ----- control and observation -------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        if self._port is None:
            raise RuntimeError("FakeUpstream has not been started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://<host>:<port>/v1``, ready for ``openai.OpenAI(base_url=...)``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def active_requests(self) -> int:
        """Requests currently being handled (all endpoints)."""
        return self._active

    @property
    def max_concurrent(self) -> int:
        """Peak of ``active_requests`` since start or the last ``reset()``."""
        return self._max_concurrent

    @property
    def disconnects(self) -> int:
        """Chat completions whose client went away before the response was complete."""
        return self._disconnects

    def stats(self, *, calls: bool = False) -> dict[str, Any]:
        """What ``GET /stats`` answers (``?calls=1`` for ``calls=True``), since start or the
        last ``reset()``:

        * ``chat_completions``: chat completions received (those that passed auth and body
          validation, and so took a behaviour);
        * ``in_flight``: how many of them are still being answered;
        * ``behaviours``: of the finished ones, how many got each behaviour, by the names
          ``ChatCall.behaviour`` uses;
        * ``usage_reported``, ``prompt_tokens``, ``completion_tokens``: how many responses
          carried a usage object sent in full, and the tokens those reported. A successful
          stream reports usage only when ``stream_options.include_usage`` asked for it;
        * ``client_left``: chat completions whose client went away before the response was
          complete (a hung one, ended by the client's timeout, counts here);
        * with ``calls``, ``calls``: one ``ChatCall`` (as a JSON object) per finished chat
          completion, in the order they finished.
        """
        with self._lock:
            finished = list(self._calls)
            received = self._chat_completions
        reported = [call.usage for call in finished if call.usage is not None]
        result: dict[str, Any] = {
            "chat_completions": received,
            "in_flight": received - len(finished),
            "behaviours": dict(Counter(call.behaviour for call in finished)),
            "usage_reported": len(reported),
            "prompt_tokens": sum(prompt for prompt, _ in reported),
            "completion_tokens": sum(completion for _, completion in reported),
            "client_left": sum(call.client_left for call in finished),
        }
        if calls:
            result["calls"] = [
                {"request_id": c.request_id, "behaviour": c.behaviour, "usage": c.usage, "client_left": c.client_left}
                for c in finished
            ]
        return result

    def enqueue(self, *behaviours: Behaviour) -> None:
        """Queue behaviours; each chat completion that passes auth and body validation
        takes the oldest one. With the queue empty, requests get ``Behaviour()``."""
        with self._lock:
            self._queue.extend(behaviours)

    def reset(self) -> None:
        """Forget queued behaviours, recorded requests, disconnects, the peak and the
        ``stats()``, restart the random faults from the seed, and restore ``latency``,
        ``fail_rate``, ``default_reply``, ``models`` and ``extra_keys`` to their initial
        values. The peak restarts from the requests still in flight."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self._disconnects = 0
            self._max_concurrent = self._active
            self._calls.clear()
            self._chat_completions = 0
            self._random = random.Random(self._seed)
        self.latency = self._initial_latency
        self.fail_rate = self._initial_fail_rate
        self.default_reply = self._initial_reply
        self.models = list(DEFAULT_MODELS)
        self.extra_keys = set()

    def _next_behaviour(self) -> tuple[Behaviour, str]:
        """The behaviour of the next chat completion, and its name for ``stats()``."""
        with self._lock:
            self._chat_completions += 1
            if self._queue:
                return self._queue.popleft(), QUEUED
            if self.fail_rate > 0 and self._random.random() < self.fail_rate:
                name = self._random.choice(list(FAULTS))
                return FAULTS[name], name
            return _SUCCESS, SUCCESS

    # ----- ASGI ----------------------------------------------------------------------------

    async def _app(self, scope: _Message, receive: _Receive, send: _Send) -> None:
        # Lifespan is off and websockets are disabled, so only "http" scopes arrive.
        received_at = time.monotonic()
        with self._lock:
            self._active += 1
            self._max_concurrent = max(self._max_concurrent, self._active)
        try:
            body = await _read_body(receive)
            if body is None:
                return
            headers: dict[str, str] = {}
            for raw_name, raw_value in scope["headers"]:
                name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            try:
                parsed: Any = json.loads(body) if body else None
            except ValueError:
                parsed = None
            method: str = scope["method"]
            path: str = scope["path"]
            with self._lock:
                self.requests.append(RecordedRequest(method, path, headers, parsed, received_at))
            query = scope["query_string"].decode("latin-1")
            await self._route(method, path, query, headers, parsed, receive, _Exchange(send))
        finally:
            with self._lock:
                self._active -= 1

    async def _route(
        self, method: str, path: str, query: str, headers: dict[str, str], body: Any, receive: _Receive,
        exchange: _Exchange,
    ) -> None:
        if self._stopping:
            await self._refuse_while_stopping(exchange)
        elif self.api_key is not None and headers.get("authorization") not in {
            f"Bearer {key}" for key in (self.api_key, *self.extra_keys)
        }:
            await exchange.json(401, _default_error_body(401, ""))
        elif method == "POST" and path == "/v1/chat/completions":
            await self._chat_completion(body, headers, receive, exchange)
        elif method == "GET" and path == "/v1/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
            await exchange.json(200, {"object": "list", "data": data})
        elif method == "GET" and path == "/stats":
            await exchange.json(200, self.stats(calls="calls=1" in query.split("&")))
        else:
            await exchange.json(404, _error(f"Invalid URL ({method} {path})", "invalid_request_error"))

    async def _refuse_while_stopping(self, exchange: _Exchange) -> None:
        await exchange.json(
            503, _error("The fake upstream is shutting down.", "server_error"), [(b"connection", b"close")]
        )

    async def _chat_completion(
        self, body: Any, headers: dict[str, str], receive: _Receive, exchange: _Exchange
    ) -> None:
        """Validate, pick a behaviour, and run it while watching for a disconnect; then
        record how it ended (``stats()``).

        The response runs as a child task so that a client disconnect (seen by the
        watcher) or ``stop()`` (which cancels it) can interrupt any wait inside it.
        """
        if not isinstance(body, dict):
            message = "We could not parse the JSON body of your request."
            await exchange.json(400, _error(message, "invalid_request_error"))
            return
        model = body.get("model")
        if not isinstance(model, str) or not model:
            await exchange.json(
                400, _error("you must provide a model parameter", "invalid_request_error", param="model")
            )
            return
        behaviour, name = self._next_behaviour()
        usage: tuple[int, int] | None = None
        client_left = False
        work = asyncio.ensure_future(self._respond(behaviour, body, model, exchange))
        watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
        self._in_flight.add(work)
        try:
            try:
                done, _ = await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._in_flight.discard(work)
                watcher.cancel()
                work.cancel()  # no-op when it finished; otherwise the client is gone
            # Checked first: the final body write also wakes the watcher, in the same step.
            if work in done:
                if not work.cancelled():
                    usage = work.result()  # re-raises a deliberate _AbortConnection
                elif exchange.started:
                    raise _AbortConnection("server stopping mid-response")
                else:
                    await self._refuse_while_stopping(exchange)
            else:
                client_left = True
                with self._lock:
                    self._disconnects += 1
        finally:
            call = ChatCall(headers.get("x-request-id"), name, usage, client_left)
            with self._lock:
                self._calls.append(call)

    async def _respond(
        self, behaviour: Behaviour, body: dict[str, Any], model: str, exchange: _Exchange
    ) -> tuple[int, int] | None:
        """Answer as ``behaviour`` says; return the usage sent in full, if any."""
        if behaviour.hang:
            await asyncio.get_running_loop().create_future()  # never resolved: only cancellation ends it
        delay = self.latency if behaviour.delay is None else behaviour.delay
        if delay > 0:
            await asyncio.sleep(delay)
        serial = next(self._ids)
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in behaviour.headers.items()]
        headers.append((b"x-request-id", f"req_fake{serial}".encode()))
        stream = body.get("stream") is True
        if behaviour.status != 200:
            error_body = behaviour.error_body or _default_error_body(behaviour.status, model)
            await exchange.json(behaviour.status, error_body, headers)
            return None
        if behaviour.malformed:
            await _send_malformed(stream, exchange, headers)
            return None
        if behaviour.body is not None:
            await exchange.json(200, behaviour.body, headers)
            return None
        if behaviour.events is not None and stream:
            await _send_events(behaviour, exchange, headers)
            return None
        reply = self.default_reply if behaviour.reply is None else behaviour.reply
        usage = _default_usage(body.get("messages"), reply) if behaviour.usage == "default" else behaviour.usage
        answer = _Answer(f"chatcmpl-fake{serial}", model, reply, usage, headers, behaviour)
        if not stream:
            await _send_completion(answer, exchange)
            return usage
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        await _send_stream(answer, include_usage, exchange)
        return usage if include_usage else None


@dataclass(frozen=True)
class _Answer:
    """What a successful chat completion says, for either wire shape."""

    completion_id: str
    model: str
    reply: str
    usage: tuple[int, int] | None
    headers: _Headers
    behaviour: Behaviour

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return [
            {"id": f"{self.completion_id.replace('chatcmpl-', 'call_')}_{n}", "type": "function",
             "function": {"name": name, "arguments": arguments}}
            for n, (name, arguments) in enumerate(self.behaviour.tool_calls)
        ]

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.behaviour.tool_calls else "stop"


async def _send_malformed(stream: bool, exchange: _Exchange, headers: _Headers) -> None:
    broken = b'{"id": "cmpl-broken", "choices": ['
    if stream:
        await exchange.start(200, [(b"content-type", b"text/event-stream"), *headers])
        await exchange.body(b"data: " + broken + b"\n\n")
    else:
        content_length = (b"content-length", str(len(broken)).encode())
        await exchange.start(200, [(b"content-type", b"application/json"), content_length, *headers])
        await exchange.body(broken)


async def _send_completion(answer: _Answer, exchange: _Exchange) -> None:
    completion: dict[str, Any] = {
        "id": answer.completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.reply, "refusal": None},
                "logprobs": None,
                "finish_reason": answer.finish_reason,
            }
        ],
    }
    if answer.tool_calls:
        message = completion["choices"][0]["message"]
        message["tool_calls"] = answer.tool_calls
        message["content"] = answer.reply or None
    if answer.usage is not None:
        completion["usage"] = _usage_object(answer.usage)
    if answer.behaviour.drop_after_words is None:
        await exchange.json(200, completion, answer.headers)
        return
    data = _dumps(completion)
    content_length = (b"content-length", str(len(data)).encode())
    await exchange.start(200, [(b"content-type", b"application/json"), content_length, *answer.headers])
    await exchange.body(data[: len(data) // 2], more=True)
    raise _AbortConnection("drop_after_words")


async def _send_events(behaviour: Behaviour, exchange: _Exchange, headers: _Headers) -> None:
    await exchange.start(200, [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), *headers])
    for index, event in enumerate(behaviour.events or ()):
        if index and behaviour.word_delay > 0:
            await asyncio.sleep(behaviour.word_delay)
        data = event.encode() if isinstance(event, str) else _dumps(event)
        await exchange.body(b"data: " + data + b"\n\n", more=True)
    await exchange.body(b"")


async def _send_stream(answer: _Answer, include_usage: bool, exchange: _Exchange) -> None:
    created = int(time.time())
    behaviour = answer.behaviour

    def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": answer.completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": answer.model,
            "choices": choices,
        }
        # OpenAI sends "usage": null on every chunk when include_usage is on.
        if include_usage:
            chunk["usage"] = usage
        return b"data: " + _dumps(chunk) + b"\n\n"

    def choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    await exchange.start(
        200, [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), *answer.headers]
    )
    # An empty reply still gets the role chunk, as OpenAI always sends one.
    pieces = _WORD_PIECE.findall(answer.reply) or ([] if answer.tool_calls else [""])
    if answer.tool_calls:
        await exchange.body(event(choice({"role": "assistant", "content": None})), more=True)
    for index, piece in enumerate(pieces):
        if index == behaviour.drop_after_words:
            raise _AbortConnection("drop_after_words")
        if index and behaviour.word_delay > 0:
            await asyncio.sleep(behaviour.word_delay)
        delta = {"role": "assistant", "content": piece} if index == 0 and not answer.tool_calls else {"content": piece}
        await exchange.body(event(choice(delta)), more=True)
    for n, call in enumerate(answer.tool_calls):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        head = {"index": n, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""}}
        for fragment in ({"tool_calls": [head]},
                         {"tool_calls": [{"index": n, "function": {"arguments": arguments[:half]}}]},
                         {"tool_calls": [{"index": n, "function": {"arguments": arguments[half:]}}]}):
            await exchange.body(event(choice(fragment)), more=True)
    if behaviour.drop_after_words is not None:
        raise _AbortConnection("drop_after_words")
    tail = event(choice({}, answer.finish_reason))
    if include_usage and answer.usage is not None:
        tail += event([], _usage_object(answer.usage))
    await exchange.body(tail + b"data: [DONE]\n\n")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Serve until Ctrl-C or SIGTERM; print the base URL once listening."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.fake_upstream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before each chat completion")
    parser.add_argument("--reply", default=DEFAULT_REPLY)
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    parser.add_argument(
        "--fail-rate", type=float, default=0.0, metavar="FRACTION",
        help=f"fraction of chat completions (0 to 1) answered with a random fault: {', '.join(FAULTS)}",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the random faults (reproducible runs)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.fail_rate <= 1.0:
        parser.error("--fail-rate must be between 0 and 1")
    fake = FakeUpstream(
        api_key=args.api_key, default_reply=args.reply, latency=args.latency_ms / 1000, host=args.host, port=args.port,
        fail_rate=args.fail_rate, seed=args.seed,
    )
    try:
        fake.start()
    except RuntimeError as exc:  # uvicorn has already logged the cause (e.g. port in use)
        parser.exit(1, f"{exc}\n")
    # Harnesses stop children with SIGTERM; give it the same clean stop as Ctrl-C. SIGINT
    # is set too because a shell without job control starts `cmd &` with SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    # flush: benchmark harnesses read this line through a pipe to learn the port.
    print(f"listening on {fake.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        # A repeated signal (double Ctrl-C, or `timeout` signalling the whole process
        # group) must not interrupt the graceful stop, which takes well under a second.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
