"""The real thing: `manage.py migrate`, `create_api_key` and `serve` (what `make run` runs) in
subprocesses, on their own SQLite file, with two worker processes, driven over real HTTP."""

import asyncio
import json
import re
import socket
import sqlite3
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.support.clock import wait_for_a_fresh_minute
from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.personas import BYOK_SENTINEL, UPSTREAM_TEST_KEY
from tests.support.served import POSTGRES_ADMIN_URL, Served, chats_at_once, manage

pytestmark = pytest.mark.e2e


def test_the_original_integration_test_passes_over_real_http(offline_server: Served) -> None:
    response = httpx.post(
        f"{offline_server.base_url}/api/v1/chat",
        json={"user_message": "Hello", "session_id": "test-session"},
        headers=offline_server.headers(),
    )

    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["response_text"]
    assert body["session_id"] == "test-session"


def test_with_no_configuration_it_chats_through_the_offline_provider(offline_server: Served) -> None:
    response = httpx.post(
        f"{offline_server.base_url}/api/v1/chat", json={"user_message": "Are you there?"},
        headers=offline_server.headers(),
    )

    assert response.json()["model"] == "offline"
    assert 'your last message was: "Are you there?"' in response.json()["response_text"]
    log = offline_server.log_file.read_text()
    assert "No upstream model is configured: the offline provider answers every chat." in log


def test_32_concurrent_chats_on_sqlite_are_each_stored_once(offline_server: Served) -> None:
    async def one_session(client: httpx.AsyncClient, number: int) -> list[int]:
        statuses = []
        for turn in range(2):
            response = await client.post(
                "/api/v1/chat", json={"session_id": f"load-{number}", "user_message": f"turn {turn}"}
            )
            statuses.append(response.status_code)
        return statuses

    async def run() -> list[list[int]]:
        async with httpx.AsyncClient(
            base_url=offline_server.base_url, headers=offline_server.headers(), timeout=30
        ) as client:
            return await asyncio.gather(*(one_session(client, n) for n in range(32)))

    results = asyncio.run(run())

    assert results == [[200, 200]] * 32
    assert offline_server.rows(
        "select count(*) from chat_chatsession where public_id like 'load-%'"
    ) == [(32,)]
    assert offline_server.rows(
        "select count(*), count(distinct m.session_id) from chat_message m join chat_chatsession s"
        " on s.id = m.session_id where s.public_id like 'load-%' and m.status = 'complete'"
    ) == [(128, 32)]
    assert offline_server.rows(
        "select count(*) from chat_usagerecord u join chat_chatsession s on s.id = u.session_id"
        " where s.public_id like 'load-%'"
    ) == [(64,)]
    assert "database is locked" not in offline_server.log_file.read_text()


def test_with_an_upstream_configured_it_chats_through_that_server(
    upstream_server: Served, fake_upstream_server: FakeUpstream
) -> None:
    fake_upstream_server.reset()
    fake_upstream_server.enqueue(Behaviour(reply="Served by the fake upstream.", usage=(12, 5)))

    response = httpx.post(
        f"{upstream_server.base_url}/api/v1/chat", json={"user_message": "Hi there"},
        headers=upstream_server.headers(),
    )

    assert response.status_code == 200
    assert response.json()["response_text"] == "Served by the fake upstream."
    assert response.json()["total_tokens_used"] == 17
    received = fake_upstream_server.requests[-1]
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_TEST_KEY}"
    assert received.json["messages"] == [{"role": "user", "content": "Hi there"}]


def test_two_turns_at_once_on_one_session_across_workers_one_gets_409(
    upstream_server: Served, fake_upstream_server: FakeUpstream
) -> None:
    fake_upstream_server.reset()
    fake_upstream_server.latency = 1.0

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=upstream_server.base_url, headers=upstream_server.headers(), timeout=30
        ) as client:
            return await asyncio.gather(*(
                client.post("/api/v1/chat", json={"session_id": "race", "user_message": f"message {n}"})
                for n in range(4)
            ))

    try:
        responses = asyncio.run(run())
    finally:
        fake_upstream_server.latency = 0.0

    assert sorted(r.status_code for r in responses) == [200, 409, 409, 409]
    assert {r.json()["error_code"] for r in responses if r.status_code == 409} == {"session_busy"}
    assert upstream_server.rows(
        "select m.role, m.status from chat_message m join chat_chatsession s on s.id = m.session_id"
        " where s.public_id = 'race' order by m.id"
    ) == [("user", "complete"), ("assistant", "complete")]


def test_one_worker_holds_many_upstream_calls_at_once(serve, fake_upstream_server: FakeUpstream) -> None:
    """The chat view must not hold a thread while it waits: with one worker process, 20 chats
    waiting on a slow upstream are all in flight together (a thread-bound view would allow one)."""
    one_worker = serve(
        OPENAI_BASE_URL=fake_upstream_server.base_url, OPENAI_API_KEY=UPSTREAM_TEST_KEY, WEB_CONCURRENCY="1"
    )
    fake_upstream_server.reset()
    fake_upstream_server.latency = 2.0

    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=one_worker.base_url, headers=one_worker.headers(), timeout=30) as client:
            responses = await asyncio.gather(*(
                client.post("/api/v1/chat", json={"session_id": f"wait-{n}", "user_message": "hi"}) for n in range(20)
            ))
        return [r.status_code for r in responses]

    try:
        statuses = asyncio.run(run())
    finally:
        fake_upstream_server.latency = 0.0

    assert statuses == [200] * 20
    assert fake_upstream_server.max_concurrent == 20


def test_the_api_docs_use_only_assets_served_by_the_project(offline_server: Served) -> None:
    page = httpx.get(f"{offline_server.base_url}/api/docs/")

    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets, "the docs page references no assets"
    assert not [url for url in assets if url.startswith(("http:", "https:", "//"))]
    for url in assets:
        assert httpx.get(f"{offline_server.base_url}{url}").status_code == 200, url
    schema = httpx.get(f"{offline_server.base_url}/api/schema/?format=json")
    assert "/api/v1/chat" in schema.json()["paths"]


def sqlite_files_bytes(database: Path) -> bytes:
    """The database file and its WAL side files, read as one snapshot.

    When the server's last connection closes, SQLite checkpoints the WAL into the main file
    and deletes it, possibly between our listing and our reading: then we read them all again.
    """
    for _ in range(100):
        try:
            return b"".join(path.read_bytes() for path in sorted(database.parent.glob(database.name + "*")))
        except FileNotFoundError:
            continue
    raise AssertionError(f"{database} kept changing while it was read")


def test_keys_never_reach_the_database_file_the_log_or_a_response(
    upstream_server: Served, fake_upstream_server: FakeUpstream
) -> None:
    fake_upstream_server.reset()
    fake_upstream_server.extra_keys.add(BYOK_SENTINEL)
    # The fourth chat fails: 500 on its first try and on both retries (LLM_MAX_RETRIES defaults to 2).
    fake_upstream_server.enqueue(Behaviour(), Behaviour(), Behaviour(), *[Behaviour(status=500)] * 3)
    url = f"{upstream_server.base_url}/api/v1/chat"
    headers = upstream_server.headers()
    responses = [
        httpx.post(url, json={"session_id": "k", "user_message": "1"}, headers={**headers, "X-Upstream-Api-Key": BYOK_SENTINEL}),
        httpx.post(url, json={"session_id": "k", "user_message": "2", "api_key": BYOK_SENTINEL, "free_mode": True},
                   headers=headers),
        httpx.post(url, json={"session_id": "k", "user_message": "3", "api_key": BYOK_SENTINEL}, headers=headers),
        httpx.post(url, json={"session_id": "k", "user_message": "4", "api_key": BYOK_SENTINEL}, headers=headers),
        httpx.post(url, json={"user_message": 5, "api_key": BYOK_SENTINEL}, headers=headers),
    ]

    assert [r.status_code for r in responses] == [200, 200, 200, 502, 400], [r.text for r in responses]
    client_secret = upstream_server.api_key[18:58]
    stored = sqlite_files_bytes(upstream_server.database)
    logged = upstream_server.log_file.read_text()
    answered = "".join(r.text + repr(r.headers) for r in responses)
    for name, secret in [("byok", BYOK_SENTINEL), ("client key", upstream_server.api_key), ("secret", client_secret)]:
        assert secret.encode() not in stored, f"{name} in the database file"
        assert secret not in logged, f"{name} in the log"
        assert secret not in answered, f"{name} in a response"


def test_on_postgresql_concurrent_requests_share_a_bounded_pool(serve, postgres_url: str) -> None:
    """Under ASGI every request runs its database work in its own thread: without the pool,
    300 concurrent requests opened a connection each and PostgreSQL refused the surplus."""
    served = serve(DATABASE_URL=postgres_url, WEB_CONCURRENCY="1", DATABASE_POOL_MAX_SIZE="5")

    async def run() -> list[int]:
        limits = httpx.Limits(max_connections=300)
        async with httpx.AsyncClient(
            base_url=served.base_url, headers=served.headers(), timeout=60, limits=limits
        ) as client:
            reads = [client.get("/api/v1/sessions") for _ in range(250)]
            chats = [client.post("/api/v1/chat", json={"session_id": f"pg-{n}", "user_message": "hi"}) for n in range(50)]
            return [r.status_code for r in await asyncio.gather(*reads, *chats)]

    statuses = asyncio.run(run())

    assert statuses == [200] * 300
    database = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        [(connections,)] = admin.execute(
            "select count(*) from pg_stat_activity where datname = %s", (database,)
        ).fetchall()
        assert connections <= 5
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("select count(*) from chat_message").fetchone() == (100,)


def test_a_client_gone_while_its_question_is_being_stored_leaves_the_session_free(offline_server: Served) -> None:
    """The question's write waits on a held SQLite lock while the client gives up; when the lock
    is released the write completes, and the turn must then be ended, not left locked."""
    # Use the key first, so that authentication has no last_used_at to write and the request
    # gets as far as storing the question.
    assert httpx.get(f"{offline_server.base_url}/api/v1/sessions", headers=offline_server.headers()).status_code == 200
    blocker = sqlite3.connect(offline_server.database, timeout=5)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{offline_server.base_url}/api/v1/chat", json={"session_id": "gone", "user_message": "hi"},
                headers=offline_server.headers(), timeout=1.0,
            )
        time.sleep(0.5)
    finally:
        blocker.rollback()
        blocker.close()

    query = (
        "select m.status, m.error_code, s.turn_started_at from chat_message m"
        " join chat_chatsession s on s.id = m.session_id where s.public_id = 'gone'"
    )
    deadline = time.monotonic() + 10
    while offline_server.rows(query) != [("failed", "client_disconnected", None)]:
        assert time.monotonic() < deadline, offline_server.rows(query)
        time.sleep(0.1)
    retry = httpx.post(
        f"{offline_server.base_url}/api/v1/chat", json={"session_id": "gone", "user_message": "again"},
        headers=offline_server.headers(),
    )
    assert retry.status_code == 200


def raw_http(served: Served, head: str) -> str:
    """Send a request head (and no body) over a plain socket; return the response as text."""
    host, port = served.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received.decode()


def test_an_oversized_body_is_refused_before_it_is_sent(offline_server: Served) -> None:
    response = raw_http(offline_server, (
        "POST /api/v1/chat HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/json\n"
        f"Authorization: Bearer {offline_server.api_key}\nContent-Length: 200000000\nAccept-Language: ko\n"
    ))

    status_line, body = response.partition("\r\n")[0], response.split("\r\n\r\n", 1)[1]
    assert status_line == "HTTP/1.1 413 Request Entity Too Large"
    assert json.loads(body) == {
        "success": False, "error_code": "request_too_large", "error_message": "요청 본문이 너무 큽니다.", "details": {},
    }


def test_a_body_without_a_length_gets_411(offline_server: Served) -> None:
    response = raw_http(offline_server, (
        "POST /api/v1/chat HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/json\n"
        f"Authorization: Bearer {offline_server.api_key}\nTransfer-Encoding: chunked\n"
    ))

    assert response.startswith("HTTP/1.1 411 Length Required")
    assert json.loads(response.split("\r\n\r\n", 1)[1])["error_code"] == "length_required"


def test_a_static_path_that_leaves_the_static_directory_is_a_400_not_a_500(offline_server: Served) -> None:
    """Sent as it is (`curl --path-as-is`): it used to be a 500, with a traceback for each."""
    response = raw_http(offline_server, "GET /static/../../../etc/passwd HTTP/1.1\nHost: 127.0.0.1\nConnection: close\n")

    assert response.startswith("HTTP/1.1 400 Bad Request")
    assert "root:" not in response
    assert "Traceback" not in offline_server.log_file.read_text()


def test_a_host_the_server_does_not_answer_to_gets_the_apis_error_shape(serve) -> None:
    """With DEBUG off, as in production (with it on, Django shows its debug page instead)."""
    served = serve(DEBUG="false")

    response = httpx.get(f"{served.base_url}/api/v1/sessions", headers={"Host": "evil.example"}, timeout=5)

    assert response.status_code == 400
    assert response.json() == {
        "success": False, "error_code": "bad_request", "error_message": "The request could not be processed.",
        "details": {},
    }
    assert "Traceback" not in served.log_file.read_text()


def test_on_postgresql_50_concurrent_chats_are_counted_exactly(
    serve, postgres_url: str, fake_upstream_server: FakeUpstream
) -> None:
    """Two worker processes, 50 chats at once, each reported by upstream as 7 + 3 tokens: exactly
    50 records, and 500 tokens in the records, the daily roll-ups and the session totals."""
    served = serve(DATABASE_URL=postgres_url, OPENAI_BASE_URL=fake_upstream_server.base_url,
                   OPENAI_API_KEY=UPSTREAM_TEST_KEY)
    fake_upstream_server.reset()
    fake_upstream_server.latency = 0.2
    fake_upstream_server.enqueue(*[Behaviour(usage=(7, 3))] * 50)

    try:
        statuses = chats_at_once(served, [{"session_id": f"exact-{n}", "user_message": "count me"} for n in range(50)])
    finally:
        fake_upstream_server.latency = 0.0

    assert statuses == [200] * 50
    key_id = served.api_key[5:17]
    with psycopg.connect(postgres_url) as connection:
        def one(sql: str) -> tuple:
            return connection.execute(sql, (key_id,)).fetchone()

        assert one(
            "select count(*), sum(u.prompt_tokens), sum(u.completion_tokens), sum(u.total_tokens) from chat_usagerecord u"
            " join chat_apikey k on k.id = u.api_key_id where k.key_id = %s"
        ) == (50, 350, 150, 500)
        assert one(
            "select sum(d.requests), sum(d.prompt_tokens), sum(d.completion_tokens), sum(d.total_tokens)"
            " from chat_usagedaily d join chat_apikey k on k.id = d.api_key_id where k.key_id = %s"
        ) == (50, 350, 150, 500)
        # The all-keys roll-up holds every key's (other tests in this module used the database too).
        assert connection.execute(
            "select sum(requests), sum(total_tokens), sum(cost) from chat_usagedailytotal"
        ).fetchone() == connection.execute(
            "select sum(requests), sum(total_tokens), sum(cost) from chat_usagedaily"
        ).fetchone()
        assert one(
            "select count(*), sum(s.prompt_tokens_total), sum(s.completion_tokens_total) from chat_chatsession s"
            " join chat_apikey k on k.id = s.api_key_id where k.key_id = %s"
        ) == (50, 350, 150)


# A database of its own, emptied by the test that reads it: db 0 may hold a developer's keys.
REDIS_URL = "redis://127.0.0.1:6379/14"


def redis_or_nothing() -> dict[str, str]:
    """REDIS_URL for the served processes when Redis runs here, else nothing (local memory)."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return {"REDIS_URL": REDIS_URL}
    except OSError:
        return {}


@pytest.fixture(scope="module")
def limited_server(serve, postgres_url: str, fake_upstream_server: FakeUpstream) -> Served:
    """Two worker processes on one PostgreSQL (and one Redis, when it runs here)."""
    return serve(
        DATABASE_URL=postgres_url, OPENAI_BASE_URL=fake_upstream_server.base_url, OPENAI_API_KEY=UPSTREAM_TEST_KEY,
        **redis_or_nothing(),
    )


def test_a_budget_for_one_request_lets_one_of_10_concurrent_requests_through(
    limited_server: Served, fake_upstream_server: FakeUpstream
) -> None:
    # gpt-4o-mini: 16,000 completion tokens cost $0.0096 in the worst case; $0.01 covers one.
    key = manage("create_api_key", "--name", "budget", "--monthly-budget", "0.01", env=limited_server.env).split()[-1]
    fake_upstream_server.reset()
    fake_upstream_server.latency = 1.0

    try:
        statuses = chats_at_once(
            limited_server, [{"session_id": f"b{n}", "user_message": "hi", "max_tokens": 16_000} for n in range(10)],
            key=key,
        )
    finally:
        fake_upstream_server.latency = 0.0

    assert sorted(statuses) == [200] + [429] * 9
    assert len([r for r in fake_upstream_server.requests if r.path == "/v1/chat/completions"]) == 1


def test_a_per_minute_limit_of_5_lets_exactly_5_of_15_through_across_two_processes(
    limited_server: Served, fake_upstream_server: FakeUpstream
) -> None:
    key = manage("create_api_key", "--name", "rpm", "--rpm", "5", env=limited_server.env).split()[-1]
    fake_upstream_server.reset()
    wait_for_a_fresh_minute(15)

    statuses = chats_at_once(limited_server, [{"session_id": f"r{n}", "user_message": "hi"} for n in range(15)], key=key)

    assert sorted(statuses) == [200] * 5 + [429] * 10
    assert len(fake_upstream_server.requests) == 5


def test_with_redis_url_the_free_mode_verdicts_are_kept_in_redis_under_a_hash(
    limited_server: Served, fake_upstream_server: FakeUpstream
) -> None:
    if "REDIS_URL" not in limited_server.env:
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    import redis

    fake_upstream_server.reset()
    fake_upstream_server.extra_keys.add(BYOK_SENTINEL)
    redis.Redis.from_url(REDIS_URL).flushdb()
    response = httpx.post(
        f"{limited_server.base_url}/api/v1/chat", headers=limited_server.headers(),
        json={"session_id": "redis", "user_message": "hi", "api_key": BYOK_SENTINEL, "free_mode": True},
    )

    assert response.status_code == 200
    verdicts = list(redis.Redis.from_url(REDIS_URL).scan_iter("*byok-verdict:*"))
    assert verdicts, "the free_mode verdict is not in Redis"
    assert all(BYOK_SENTINEL.encode() not in name for name in verdicts)
