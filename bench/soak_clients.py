"""The soak's clients (bench/soak.py): what each one sends, and what it read in each answer."""

import asyncio
import dataclasses
import json
import random
import time
from dataclasses import dataclass, field

from bench.harness import TURNS_PER_SESSION, Connection, Outcome, Target

# The server's upstream error codes (chat/exceptions.py, the UpstreamError subclasses): the
# only ones a 5xx, or an error event in a stream, may carry here.
UPSTREAM_ERROR_CODES = frozenset({
    "upstream_error", "upstream_bad_response", "upstream_unavailable", "upstream_timeout",
    "upstream_interrupted", "upstream_rate_limited", "upstream_auth_failed", "upstream_rejected_request",
})
# What the server answers when its database is cut or it has more requests than it can take: 503s
# that begin no turn (no usage record).
REFUSED_BY_SERVER = frozenset({"database_unavailable", "server_busy"})
# Each kind of request, and how often a client sends it.
KINDS = {"api": 0.4, "api stream": 0.4, "v1": 0.1, "v1 stream": 0.1}
# A failed or partial usage record's error code is the answer's; a success has none.
SUCCESS, FAILED, PARTIAL = "success", "failed", "partial"


@dataclass(frozen=True)
class Answer:
    """One request's answer, as its client read it.

    `record` is the usage record the server must have written for it, as (outcome, error code),
    or None when no turn began (or the answer could not be read). `usage` is (prompt, completion)
    tokens of a success.
    """

    kind: str
    request_id: str
    stored: bool  # a turn of a stored session (not a stateless /v1 call)
    status: int  # 0: no HTTP answer at all (see error_code)
    error_code: str = ""
    in_stream: bool = False
    record: tuple[str, str] | None = None
    usage: tuple[int, int] | None = None
    seconds: float = 0.0
    # When the client had the answer (or gave up), as time.perf_counter() reads it.
    ended: float = 0.0

    @property
    def label(self) -> str:
        if self.status == 0:
            return f"client: {self.error_code}"
        return f"{self.status} {self.error_code or '-'}{' (in stream)' if self.in_stream else ''}"

    @property
    def unmapped_server_error(self) -> bool:
        """A 5xx, or an error event in a stream, without an upstream error code (or the 503 of a
        server refusing a request while its database is cut)."""
        expected = UPSTREAM_ERROR_CODES | REFUSED_BY_SERVER
        return (self.status >= 500 or self.in_stream) and self.error_code not in expected

    @property
    def unexpected(self) -> bool:
        """Neither a success nor an upstream error nor the server refusing while cut off."""
        if self.status == 200:
            return self.record is None
        return self.error_code not in UPSTREAM_ERROR_CODES | REFUSED_BY_SERVER


def _events(body: bytes) -> list[tuple[str, str]]:
    """Server-sent events as (event name, data); the name is "" when the event has none."""
    events = []
    for block in body.decode().split("\n\n"):
        name, data = "", []
        for text in block.split("\n"):
            if text.startswith("event: "):
                name = text[7:]
            elif text.startswith("data: "):
                data.append(text[6:])
        if data:
            events.append((name, "\n".join(data)))
    return events


def _error_code(body: bytes, *, openai: bool) -> str:
    try:
        data = json.loads(body)
        return str(data["error"]["code"] if openai else data["error_code"])
    except (ValueError, KeyError, TypeError):
        return "(not our error shape)"


def read_answer(kind: str, request_id: str, stored: bool, outcome: Outcome) -> Answer:
    """What the client saw, and the usage record that implies. Raises ValueError (or KeyError)
    when a 200 answer cannot be read."""
    openai, stream = kind.startswith("v1"), kind.endswith("stream")
    seen = {"kind": kind, "request_id": request_id, "stored": stored, "seconds": outcome.total}

    def success(prompt_tokens: int, completion_tokens: int) -> Answer:
        return Answer(status=200, record=(SUCCESS, ""), usage=(prompt_tokens, completion_tokens), **seen)

    def stream_error(code: str, *, deltas: int) -> Answer:
        # After the first delta the turn is cut short (partial); an error event before any
        # would be a failed turn (the server answers those with a status code instead).
        record = (PARTIAL if deltas else FAILED, code) if code in UPSTREAM_ERROR_CODES else None
        return Answer(status=200, error_code=code, in_stream=True, record=record, **seen)

    if outcome.status != 200:
        code = _error_code(outcome.body, openai=openai)
        record = (FAILED, code) if code in UPSTREAM_ERROR_CODES else None
        return Answer(status=outcome.status, error_code=code, record=record, **seen)
    if not stream:
        data = json.loads(outcome.body)
        usage = data["usage"] if openai else data
        return success(usage["prompt_tokens"], usage["completion_tokens"])
    events = _events(outcome.body)
    if not openai:  # delta events, then done or error
        name, data = events[-1]
        if name == "done":
            done = json.loads(data)
            return success(done["prompt_tokens"], done["completion_tokens"])
        if name == "error":
            return stream_error(json.loads(data)["error_code"], deltas=sum(n == "delta" for n, _ in events))
        raise ValueError(f"a stream that ends with neither done nor error: {outcome.body[-200:]!r}")
    # chat.completion.chunk events, then [DONE]; or an {"error": ...} event
    chunks = [json.loads(data) for _, data in events if data != "[DONE]"]
    if chunks and "error" in chunks[-1]:
        deltas = sum(bool(c.get("choices") and c["choices"][0]["delta"].get("content")) for c in chunks)
        return stream_error(chunks[-1]["error"]["code"], deltas=deltas)
    if events[-1][1] != "[DONE]":
        raise ValueError(f"a stream that ends with neither [DONE] nor an error: {outcome.body[-200:]!r}")
    usage = next(c["usage"] for c in chunks if c.get("usage"))
    return success(usage["prompt_tokens"], usage["completion_tokens"])


@dataclass
class Tally:
    answers: list[Answer] = field(default_factory=list)
    # Since the last progress line.
    recent: int = 0


async def run_client(
    number: int, *, targets: dict[str, Target], run_id: str, seed: int, deadline: float, timeout: float, tally: Tally
) -> None:
    """One client: one request after another, on one keep-alive connection, until `deadline`."""
    rng = random.Random(f"{seed}:{number}")
    connection: Connection | None = None
    sequence = 0
    while time.perf_counter() < deadline:
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        target = targets[kind]
        request_id = f"soak-{run_id}-{number}-{sequence}"
        headers = {**target.headers, "X-Request-Id": request_id}
        stored = not kind.startswith("v1") or rng.random() < 0.5
        if kind.startswith("v1") and stored:
            headers["X-Session-Id"] = f"{run_id}-{number}-{sequence // TURNS_PER_SESSION}"
        body = target.make_body(number, sequence)
        sequence += 1
        if connection is None:
            connection = Connection(target.host, target.port)
        started = time.perf_counter()
        try:
            outcome = await asyncio.wait_for(connection.request(target.path, body, headers), timeout)
            answer = read_answer(kind, request_id, stored, outcome)
        except Exception as exc:  # noqa: BLE001 - every one is counted and shown
            connection.close()
            connection = None
            if isinstance(exc, TimeoutError):
                what = f"no answer in {timeout:g} s"
            elif isinstance(exc, (ValueError, LookupError, TypeError)):
                what = f"unreadable answer ({type(exc).__name__})"
            else:
                what = type(exc).__name__
            answer = Answer(kind=kind, request_id=request_id, stored=stored, status=0, error_code=what,
                            seconds=time.perf_counter() - started)
        answer = dataclasses.replace(answer, ended=time.perf_counter())
        if answer.status == 0:
            # The connection broke (its worker killed, say): the session's lease stays with the
            # lost turn until it runs out, so go on in a new session, as a client would.
            sequence = (sequence // TURNS_PER_SESSION + 1) * TURNS_PER_SESSION
        tally.answers.append(answer)
        tally.recent += 1
    if connection is not None:
        connection.close()
