"""Nothing lost on a restart, a crash or a database blip, and no 500 under a burst: real servers
(`manage.py serve`, two workers) over real HTTP, on SQLite and on PostgreSQL.

A turn's usage record is written before its call (in flight) and its session's lease is renewed
while upstream works, so that whatever ends a process mid-turn, the call keeps its one record, the
question does not stay pending, and the session is free again within CHAT_TURN_LEASE_SECONDS.
"""

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import psutil
import pytest

from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.personas import UPSTREAM_TEST_KEY
from tests.support.processes import postgres_cut
from tests.support.served import Served, eventually

pytestmark = pytest.mark.e2e

# Short, so that a crash's lease runs out within the test: the default is 20 s.
LEASE_SECONDS = 6
# The acceptance's bound: a session of a turn cut off by a restart answers again within this.
ANSWERED_AGAIN_WITHIN_SECONDS = 30
SESSIONS = [f"restart-{n}" for n in range(4)]


def server(serve, database_env: dict[str, str], fake: FakeUpstream, **extra: str) -> Served:
    return serve(
        OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY=UPSTREAM_TEST_KEY, CHAT_TURN_LEASE_SECONDS=str(LEASE_SECONDS),
        GRACEFUL_SHUTDOWN_SECONDS="1", LLM_MAX_RETRIES="0", **database_env, **extra,
    )


def chat(served: Served, session_id: str, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{served.base_url}/api/v1/chat", json={"session_id": session_id, "user_message": "Hi"},
                      headers=served.headers(), timeout=timeout)


def in_background(call: Callable[[], Any]) -> threading.Thread:
    def run() -> None:
        try:
            call()
        except httpx.HTTPError:
            pass  # the server went away mid-request: that is the point

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def turns_hanging_on_upstream(served: Served, upstream: FakeUpstream) -> list[threading.Thread]:
    upstream.enqueue(*[Behaviour(hang=True)] * len(SESSIONS))
    threads = [in_background(lambda s=s: chat(served, s)) for s in SESSIONS]
    assert eventually(lambda: upstream.active_requests >= len(SESSIONS), timeout=15)
    return threads


def answered_again(served: Served) -> list[float]:
    """Seconds until each session answers a new turn (busy ones asked again), in order."""
    started = time.monotonic()
    seconds = []
    for session_id in SESSIONS:
        while True:
            response = chat(served, session_id)
            if response.status_code != 409:
                assert response.status_code == 200, response.text
                break
            assert time.monotonic() - started < ANSWERED_AGAIN_WITHIN_SECONDS, f"{session_id} still busy"
            time.sleep(0.5)
        seconds.append(time.monotonic() - started)
    return seconds


def accounts(served: Served, upstream: FakeUpstream) -> dict[str, Any]:
    """The calls upstream received, and the usage records and pending questions of the served key
    (on PostgreSQL, a module's tests share one database)."""
    key = f"(SELECT id FROM chat_apikey WHERE key_id = '{served.api_key.split('_')[1]}')"
    return {
        "calls": upstream.stats()["chat_completions"],
        "records": served.rows(f"SELECT outcome, error_code, count(*) FROM chat_usagerecord WHERE api_key_id = {key} "
                               "GROUP BY outcome, error_code ORDER BY outcome, error_code"),
        "pending": served.rows("SELECT count(*) FROM chat_message m JOIN chat_chatsession s ON s.id = m.session_id "
                               f"WHERE m.status = 'pending' AND s.api_key_id = {key}")[0][0],
    }


def test_a_restart_with_turns_in_flight_closes_them_and_frees_their_sessions(
    serve, database_env: dict[str, str], upstream: FakeUpstream
) -> None:
    served = server(serve, database_env, upstream)
    threads = turns_hanging_on_upstream(served, upstream)

    served.process.send_signal(signal.SIGTERM)
    served.process.wait(timeout=30)
    for thread in threads:
        thread.join(timeout=10)
    restarted = serve.again(served)
    seconds = answered_again(restarted)

    assert max(seconds) < ANSWERED_AGAIN_WITHIN_SECONDS
    # The four cut short were closed by the stopping process itself (no sweep needed).
    assert accounts(restarted, upstream) == {
        "calls": 8, "records": [("interrupted", "server_shutdown", 4), ("success", "", 4)], "pending": 0,
    }
    # Their prompts were sent: counted (by the server's count) in the records and the sessions' totals.
    key = f"(SELECT id FROM chat_apikey WHERE key_id = '{restarted.api_key.split('_')[1]}')"
    cut = restarted.rows(f"SELECT prompt_tokens, usage_estimated FROM chat_usagerecord WHERE api_key_id = {key} "
                         "AND error_code = 'server_shutdown'")
    assert len(cut) == 4 and all(prompt > 0 and estimated for prompt, estimated in cut)
    assert restarted.rows(
        f"SELECT sum(prompt_tokens) FROM chat_usagerecord WHERE api_key_id = {key}"
    ) == restarted.rows(f"SELECT sum(prompt_tokens_total) FROM chat_chatsession WHERE api_key_id = {key}")


def test_a_crash_with_turns_in_flight_frees_their_sessions_and_the_sweep_closes_them(
    serve, database_env: dict[str, str], upstream: FakeUpstream
) -> None:
    served = server(serve, database_env, upstream)
    turns_hanging_on_upstream(served, upstream)

    # kill -9, workers and all: nothing of the server runs its shutdown.
    tree = psutil.Process(served.process.pid)
    for process in [*tree.children(recursive=True), tree]:
        process.kill()
    served.process.wait(timeout=10)
    restarted = serve.again(served)
    seconds = answered_again(restarted)

    assert max(seconds) < ANSWERED_AGAIN_WITHIN_SECONDS
    # The sweep (every half lease period) closes the four whose process died.
    expected = {"calls": 8, "records": [("interrupted", "interrupted", 4), ("success", "", 4)], "pending": 0}
    assert eventually(lambda: accounts(restarted, upstream) == expected, timeout=LEASE_SECONDS * 3), (
        accounts(restarted, upstream)
    )


@pytest.fixture
def postgres_server(serve, postgres_url: str, upstream: FakeUpstream) -> Served:
    return server(serve, {"DATABASE_URL": postgres_url}, upstream)


@pytest.mark.parametrize("refused_for", [0.0, 2.0], ids=["backends terminated", "connections refused for 2 s"])
def test_a_database_cut_while_upstream_answers_loses_nothing(
    postgres_server: Served, upstream: FakeUpstream, refused_for: float
) -> None:
    served = postgres_server
    database = served.env["DATABASE_URL"].rsplit("/", 1)[1]
    chat(served, "warm")  # the pool holds connections now, which the cut will break
    upstream.enqueue(Behaviour(delay=1.0, reply="Still here."))
    answer: dict[str, httpx.Response] = {}
    thread = in_background(lambda: answer.update(response=chat(served, "cut")))
    assert eventually(lambda: upstream.active_requests >= 1, timeout=10)

    postgres_cut(database, refuse_for=refused_for)
    thread.join(timeout=60)

    assert answer["response"].status_code == 200, answer["response"].text
    assert answer["response"].json()["response_text"] == "Still here."
    assert accounts(served, upstream) == {"calls": 2, "records": [("success", "", 2)], "pending": 0}


@pytest.mark.parametrize(("queue_seconds", "statuses"), [("30", {200}), ("0.2", {200, 503})])
def test_a_burst_waits_its_turn_or_is_told_the_server_is_busy_never_a_500(
    serve, postgres_url: str, upstream: FakeUpstream, queue_seconds: str, statuses: set[int]
) -> None:
    """200 chats at once on one worker whose pool has 2 connections that it waits at most 0.5 s
    for: they used to end in 500s (PoolTimeout). They queue in the event loop instead, for
    DATABASE_QUEUE_TIMEOUT_SECONDS, and those that wait longer get 503 server_busy."""
    upstream.latency = 0.5
    served = server(
        serve, {"DATABASE_URL": postgres_url}, upstream, WEB_CONCURRENCY="1", DATABASE_POOL_MAX_SIZE="2",
        DATABASE_POOL_MIN_SIZE="1", DATABASE_POOL_TIMEOUT_SECONDS="0.5", DATABASE_QUEUE_TIMEOUT_SECONDS=queue_seconds,
    )

    answers = burst(served, 200)

    assert {answer.status_code for answer in answers} <= statuses, sorted({a.status_code for a in answers})
    for refused in (answer for answer in answers if answer.status_code == 503):
        assert (refused.json()["error_code"], refused.headers["retry-after"]) == ("server_busy", "1")
    answered = sum(answer.status_code == 200 for answer in answers)
    assert accounts(served, upstream) == {"calls": answered, "records": [("success", "", answered)], "pending": 0}


def burst(served: Served, count: int) -> list[httpx.Response]:
    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served.base_url, headers=served.headers(), timeout=120,
                                     limits=httpx.Limits(max_connections=count)) as client:
            return await asyncio.gather(*(
                client.post("/api/v1/chat", json={"session_id": f"burst-{n}", "user_message": "Hi"})
                for n in range(count)
            ))

    return asyncio.run(send())

