"""Two server instances (two `manage.py serve` processes, as two machines would run them) on one
PostgreSQL and one Redis behave as one service: a session continues on either, one turn at a
time per session holds across them, a key's limits hold over both together, usage is counted
once, a revoked key stops on both, and a free_mode verdict cached by one is used by the other.

Skipped where PostgreSQL or Redis is not running (`make test` with SQLite alone); `.ci/run`
starts both."""

import asyncio

import httpx
import psycopg
import pytest

from tests.support.clock import wait_for_a_fresh_minute
from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.personas import UPSTREAM_TEST_KEY
from tests.support.served import Served, manage

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def instances(serve, postgres_url: str, redis_url: str, fake_upstream_server: FakeUpstream) -> tuple[Served, Served]:
    shared = {
        "DATABASE_URL": postgres_url, "REDIS_URL": redis_url, "WEB_CONCURRENCY": "1",
        "OPENAI_BASE_URL": fake_upstream_server.base_url, "OPENAI_API_KEY": UPSTREAM_TEST_KEY,
        "LLM_DEFAULT_MODEL": "gpt-4o-mini",
    }
    return serve(**shared), serve(**shared)


def chat(served: Served, key: str, **body) -> httpx.Response:
    return httpx.post(f"{served.base_url}/api/v1/chat", headers={"Authorization": f"Bearer {key}"},
                      json=body, timeout=30)


def test_a_session_started_on_one_instance_continues_on_the_other(
    instances: tuple[Served, Served], upstream: FakeUpstream
) -> None:
    a, b = instances

    first = chat(a, a.api_key, session_id="shared-1", user_message="My name is Ada.")
    second = chat(b, a.api_key, session_id="shared-1", user_message="What is my name?")

    assert (first.status_code, second.status_code) == (200, 200), second.text
    sent_by_b = upstream.requests[-1].json["messages"]
    assert [m["content"] for m in sent_by_b][-3:] == ["My name is Ada.", first.json()["response_text"], "What is my name?"]
    listed = httpx.get(f"{b.base_url}/api/v1/sessions/shared-1/messages", headers=a.headers()).json()
    assert listed["count"] == 4


def test_one_turn_at_a_time_per_session_holds_across_instances(
    instances: tuple[Served, Served], upstream: FakeUpstream
) -> None:
    a, b = instances
    upstream.enqueue(Behaviour(delay=2.0))

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers=a.headers(), timeout=30) as client:
            slow = asyncio.create_task(client.post(f"{a.base_url}/api/v1/chat",
                                                   json={"session_id": "shared-2", "user_message": "slow one"}))
            await asyncio.sleep(0.7)  # the first turn is now waiting on upstream
            second = await client.post(f"{b.base_url}/api/v1/chat",
                                       json={"session_id": "shared-2", "user_message": "meanwhile"})
            return [await slow, second]

    slow, second = asyncio.run(run())

    assert slow.status_code == 200
    assert (second.status_code, second.json()["error_code"]) == (409, "session_busy")


def test_a_keys_limit_holds_over_both_instances_together(
    instances: tuple[Served, Served], upstream: FakeUpstream
) -> None:
    a, b = instances
    limited = manage("create_api_key", "--name", "limited", "--rpm", "4", env=a.env).strip().splitlines()[-1]
    wait_for_a_fresh_minute()

    async def run() -> list[int]:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {limited}"}, timeout=30) as client:
            posts = [client.post(f"{served.base_url}/api/v1/chat", json={"user_message": f"hi {n}"})
                     for n, served in enumerate([a, b] * 5)]
            return [r.status_code for r in await asyncio.gather(*posts)]

    statuses = asyncio.run(run())

    assert sorted(statuses) == [200] * 4 + [429] * 6
    assert len([r for r in upstream.requests if r.path == "/v1/chat/completions"]) == 4


def test_usage_from_both_instances_is_counted_once(
    instances: tuple[Served, Served], upstream: FakeUpstream, postgres_url: str
) -> None:
    a, b = instances
    key = manage("create_api_key", "--name", "usage", env=a.env).strip().splitlines()[-1]

    answers = [chat(served, key, user_message="count me").json() for served in (a, b, a, b, b)]

    spent = sum(answer["total_tokens_used"] for answer in answers)
    reported = [httpx.get(f"{served.base_url}/api/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
                for served in (a, b)]
    assert reported[0] == reported[1]
    assert (reported[0]["totals"]["requests"], reported[0]["totals"]["total_tokens"]) == (5, spent)
    key_id = key.split("_")[1]
    with psycopg.connect(postgres_url) as connection:
        [(records, tokens)] = connection.execute(
            "SELECT count(*), sum(u.total_tokens) FROM chat_usagerecord u JOIN chat_apikey k ON k.id = u.api_key_id "
            "WHERE k.key_id = %s", (key_id,)
        ).fetchall()
    assert (records, tokens) == (5, spent)


def test_a_key_revoked_in_the_shared_database_stops_on_both(instances: tuple[Served, Served]) -> None:
    a, b = instances
    key = manage("create_api_key", "--name", "to-revoke", env=a.env).strip().splitlines()[-1]
    assert [httpx.get(f"{s.base_url}/api/v1/sessions", headers={"Authorization": f"Bearer {key}"}).status_code
            for s in (a, b)] == [200, 200]

    manage("revoke_api_key", key.split("_")[1], env=a.env)

    assert [httpx.get(f"{s.base_url}/api/v1/sessions", headers={"Authorization": f"Bearer {key}"}).status_code
            for s in (a, b)] == [401, 401]


def test_a_free_mode_verdict_cached_by_one_instance_is_used_by_the_other(
    instances: tuple[Served, Served], upstream: FakeUpstream
) -> None:
    a, b = instances
    own_key = "sk-callers-own-key-for-two-instances"
    upstream.extra_keys.add(own_key)
    headers = {"Authorization": f"Bearer {a.api_key}", "X-Upstream-Api-Key": own_key}

    answers = [httpx.post(f"{s.base_url}/api/v1/chat", headers=headers, timeout=30,
                          json={"user_message": "mine", "free_mode": True}) for s in (a, b)]

    assert [r.json()["key_source"] for r in answers] == ["user_provided", "user_provided"]
    # The key was checked upstream once (GET /v1/models), by the first instance only.
    assert [(r.method, r.path) for r in upstream.requests] == [
        ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/chat/completions"),
    ]
