"""The fault matrix: every way upstream fails, over real HTTP on both sides (client -> the served
server -> the fake upstream), on SQLite and on PostgreSQL.

For each fault it shows: the client's status and error_code; how many times upstream was asked
(retries only after a retryable status or a connection that never reached upstream, bounded by
LLM_MAX_RETRIES, never once a stream started); that the worker let go of upstream (the fake saw
the connection close) and answers the next request; the user's message kept with its status; no
invented answer (a stream cut short is kept as it was, marked incomplete); exactly one usage record.

The table of what happened is written to test-artifacts/fault_matrix.md.
"""

import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.personas import UPSTREAM_TEST_KEY
from tests.support.processes import PROJECT_DIR, free_port
from tests.support.served import Served, session_results, stream_chat

pytestmark = pytest.mark.e2e

TIMEOUT_SECONDS = 1.0
MAX_RETRIES = 2
REPLY = "one two three four five six"
ARTIFACT = PROJECT_DIR / "test-artifacts" / "fault_matrix.md"
COMPLETION_BODY = {"id": "x", "object": "chat.completion", "model": "gpt-4o-mini", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}]}
CHUNK_ONE, CHUNK_TWO = (
    {"id": "x", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
     "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    for text in ("one", " two")
)
_table: list[str] = []


@dataclass(frozen=True)
class Fault:
    name: str
    behaviours: tuple[Behaviour, ...]
    # What the client gets: the response's status and error_code (None: answered). For a stream
    # that started, the status is 200 and the error comes as the last event.
    status: int
    error_code: str | None
    attempts: int
    user_status: str
    # The stored assistant message's status; None: none stored.
    answer_status: str | None
    # The one usage record: outcome, error_code, usage_estimated.
    usage: tuple[str, str, bool]
    stream: bool = False
    retry_after: str | None = None
    answer_text: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)


FAULTS = [
    Fault("hung upstream (no bytes)", (Behaviour(hang=True),), 504, "upstream_timeout", 1,
          "failed", None, ("failed", "upstream_timeout", False)),
    Fault("hung upstream, streamed", (Behaviour(hang=True),), 504, "upstream_timeout", 1,
          "failed", None, ("failed", "upstream_timeout", False), stream=True),
    Fault("slow first byte, inside the timeout", (Behaviour(delay=0.5, reply=REPLY),), 200, None, 1,
          "complete", "complete", ("success", "", False)),
    Fault("slow first byte, past the timeout", (Behaviour(delay=3, reply=REPLY),), 504, "upstream_timeout", 1,
          "failed", None, ("failed", "upstream_timeout", False)),
    Fault("429 with Retry-After: 1, then an answer",
          (Behaviour(status=429, headers={"retry-after": "1"}), Behaviour(reply=REPLY)), 200, None, 2,
          "complete", "complete", ("success", "", False)),
    Fault("429 with Retry-After: 30 (longer than a worker waits)",
          (Behaviour(status=429, headers={"retry-after": "30"}),), 429, "upstream_rate_limited", 1,
          "failed", None, ("failed", "upstream_rate_limited", False), retry_after="30"),
    Fault("500 on every try", (Behaviour(status=500),) * 3, 502, "upstream_error", 3,
          "failed", None, ("failed", "upstream_error", False)),
    Fault("502 on every try", (Behaviour(status=502),) * 3, 502, "upstream_error", 3,
          "failed", None, ("failed", "upstream_error", False)),
    Fault("503 on every try, streamed", (Behaviour(status=503),) * 3, 502, "upstream_error", 3,
          "failed", None, ("failed", "upstream_error", False), stream=True),
    Fault("503, then an answer", (Behaviour(status=503), Behaviour(reply=REPLY)), 200, None, 2,
          "complete", "complete", ("success", "", False)),
    Fault("connection dropped mid-body", (Behaviour(reply=REPLY, drop_after_words=1),), 502,
          "upstream_interrupted", 1, "failed", None, ("failed", "upstream_interrupted", False)),
    Fault("connection dropped mid-stream", (Behaviour(reply=REPLY, drop_after_words=3),), 200,
          "upstream_interrupted", 1, "incomplete", "incomplete", ("partial", "upstream_interrupted", True),
          stream=True, answer_text="one two three"),
    Fault("malformed JSON", (Behaviour(malformed=True),), 502, "upstream_bad_response", 1,
          "failed", None, ("failed", "upstream_bad_response", False)),
    Fault("malformed stream", (Behaviour(malformed=True),), 502, "upstream_bad_response", 1,
          "failed", None, ("failed", "upstream_bad_response", False), stream=True),
    Fault("JSON that is not a completion", (Behaviour(body={"choices": []}),), 502, "upstream_bad_response", 1,
          "failed", None, ("failed", "upstream_bad_response", False)),
    Fault("an answer without usage", (Behaviour(reply=REPLY, usage=None),), 200, None, 1,
          "complete", "complete", ("success", "", True)),
    Fault("a stream without usage", (Behaviour(reply=REPLY, usage=None),), 200, None, 1,
          "complete", "complete", ("success", "", True), stream=True),
    Fault("an answer with NUL and a lone surrogate in it", (Behaviour(reply="a\x00b \ud800c"),), 200, None, 1,
          "complete", "complete", ("success", "", False), answer_text="a\ufffdb ?c"),
    # An upstream that ignores `stream` and answers whole: nothing of it is stored as an answer.
    Fault("a stream answered with plain JSON", (Behaviour(body=COMPLETION_BODY),), 502, "upstream_bad_response", 1,
          "failed", None, ("failed", "upstream_bad_response", False), stream=True),
    # The connection closes cleanly after two chunks, without a finish_reason or [DONE]: cut off.
    Fault("a stream that stops without its end", (Behaviour(events=(CHUNK_ONE, CHUNK_TWO)),), 200,
          "upstream_interrupted", 1, "incomplete", "incomplete", ("partial", "upstream_interrupted", True),
          stream=True, answer_text="one two"),
]


@pytest.fixture(scope="module")
def served(serve, database_env: dict[str, str], fake_upstream_server: FakeUpstream) -> Served:
    return serve(
        OPENAI_BASE_URL=fake_upstream_server.base_url, OPENAI_API_KEY=UPSTREAM_TEST_KEY,
        LLM_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS), LLM_MAX_RETRIES=str(MAX_RETRIES), **database_env,
    )


@pytest.fixture(scope="module", autouse=True)
def write_table(database_env: dict[str, str]) -> Any:
    yield
    database = "PostgreSQL" if database_env else "SQLite"
    ARTIFACT.parent.mkdir(exist_ok=True)
    mode = "a" if database == "PostgreSQL" and ARTIFACT.exists() else "w"
    with ARTIFACT.open(mode) as out:
        out.write(
            f"\n## {database} (LLM_TIMEOUT_SECONDS={TIMEOUT_SECONDS}, LLM_MAX_RETRIES={MAX_RETRIES})\n\n"
            "| fault | client got | upstream asked | seconds | user message | answer stored | usage record |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(_table) + "\n"
        )
    _table.clear()


def send(served: Served, fault: Fault, session_id: str) -> tuple[int, str | None, httpx.Response]:
    body = {"session_id": session_id, "user_message": "Count to six"}
    if not fault.stream:
        response = httpx.post(f"{served.base_url}/api/v1/chat", json=body, headers=served.headers(), timeout=60)
        return response.status_code, response.json().get("error_code"), response
    response, events = stream_chat(served, **body)
    if not events:
        return response.status_code, response.json().get("error_code"), response
    name, data = events[-1]
    return response.status_code, data.get("error_code") if name == "error" else None, response


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
def test_fault(served: Served, upstream: FakeUpstream, fault: Fault) -> None:
    session_id = f"fault-{FAULTS.index(fault)}"
    upstream.enqueue(*fault.behaviours)
    disconnects_before = upstream.disconnects

    started = time.monotonic()
    status, error_code, response = send(served, fault, session_id)
    seconds = time.monotonic() - started

    assert (status, error_code) == (fault.status, fault.error_code)
    assert len(upstream.requests) == fault.attempts
    if fault.retry_after:
        assert response.headers["retry-after"] == fault.retry_after
    waited_for = [float(b.headers["retry-after"]) for b in fault.behaviours[:-1] if "retry-after" in b.headers]
    if fault.attempts > 1 and waited_for:
        # The retry came after upstream's Retry-After, not sooner.
        retry_gap = upstream.requests[1].received_at - upstream.requests[0].received_at
        assert retry_gap >= waited_for[0]
    if any(b.hang or (b.delay or 0) > TIMEOUT_SECONDS for b in fault.behaviours):
        # The worker gave up on upstream and closed the connection, rather than leaving it open.
        assert upstream.disconnects == disconnects_before + 1
    messages = session_results(served, session_id, "messages")
    assert [m["role"] for m in messages] == ["user"] + (["assistant"] if fault.answer_status else [])
    assert messages[0]["status"] == fault.user_status
    if fault.answer_status:
        assert messages[1]["status"] == fault.answer_status
        assert messages[1]["content"] == (fault.answer_text or REPLY)
    usage = session_results(served, session_id, "usage")
    assert [(u["outcome"], u["error_code"], u["usage_estimated"]) for u in usage] == [fault.usage]
    # The worker is free: the next request is answered.
    assert httpx.get(f"{served.base_url}/api/v1/system/health", timeout=5).status_code == 200

    _table.append(
        f"| {fault.name} | {status} {error_code or 'answered'} | {len(upstream.requests)} | {seconds:.2f} | "
        f"{fault.user_status} | {fault.answer_status or 'none'} | {'/'.join(map(str, fault.usage))} |"
    )


def test_connection_refused_is_retried_then_503(serve, database_env: dict[str, str]) -> None:
    """Nothing listens on upstream's port: the request never reached upstream, so it is retried."""
    served = serve(
        OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1", OPENAI_API_KEY=UPSTREAM_TEST_KEY,
        LLM_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS), LLM_MAX_RETRIES=str(MAX_RETRIES), **database_env,
    )
    started = time.monotonic()
    response = httpx.post(
        f"{served.base_url}/api/v1/chat", json={"session_id": "refused", "user_message": "Hi"},
        headers=served.headers(), timeout=60,
    )
    seconds = time.monotonic() - started

    assert (response.status_code, response.json()["error_code"]) == (503, "upstream_unavailable")
    assert served.log_file.read_text().count("upstream retry") == MAX_RETRIES
    messages = session_results(served, "refused", "messages")
    assert [(m["role"], m["status"]) for m in messages] == [("user", "failed")]
    usage = session_results(served, "refused", "usage")
    assert [(u["outcome"], u["error_code"]) for u in usage] == [("failed", "upstream_unavailable")]
    _table.append(
        f"| connection refused | 503 upstream_unavailable | {1 + MAX_RETRIES} connects | {seconds:.2f} | failed | none | "
        "failed/upstream_unavailable/False |"
    )
