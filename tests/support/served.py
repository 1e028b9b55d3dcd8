"""Real servers for end-to-end tests: `manage.py migrate`, `create_api_key` and `serve` (what
`make run` runs) in subprocesses, each on its own SQLite file (or a database given by URL),
with two worker processes, driven over real HTTP.

The fixtures are module-scoped: a test module starts the servers it asks for once, and they are
stopped when the module ends."""

import asyncio
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.personas import UPSTREAM_TEST_KEY
from tests.support.processes import (
    POSTGRES_ADMIN_URL,
    PROJECT_DIR,
    child_environment,
    free_port,
    fresh_postgres_database,
    run_manage,
    stop,
    wait_until_healthy,
)

STARTUP_TIMEOUT_SECONDS = 30


@dataclass
class Served:
    base_url: str
    api_key: str
    database: Path
    log_file: Path
    # The environment the server runs with, for manage.py commands against the same database.
    env: dict[str, str]
    # The `manage.py serve` process (uvicorn's, whose workers are its children).
    process: subprocess.Popen | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def rows(self, sql: str) -> list[tuple]:
        """The rows of `sql`, read from the server's database directly (SQLite or PostgreSQL)."""
        url = self.env["DATABASE_URL"]
        if url.startswith("postgres"):
            with psycopg.connect(url) as connection:
                return connection.execute(sql).fetchall()
        with sqlite3.connect(self.database) as connection:
            return connection.execute(sql).fetchall()


def manage(*args: str, env: dict[str, str]) -> str:
    result = run_manage(*args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def chats_at_once(served: Served, bodies: list[dict], key: str | None = None) -> list[int]:
    """POST every body to /api/v1/chat at the same time; the statuses, in order."""
    async def run() -> list[int]:
        headers = {"Authorization": f"Bearer {key}"} if key else served.headers()
        async with httpx.AsyncClient(
            base_url=served.base_url, headers=headers, timeout=60, limits=httpx.Limits(max_connections=300)
        ) as client:
            responses = await asyncio.gather(*(client.post("/api/v1/chat", json=body) for body in bodies))
        return [r.status_code for r in responses]

    return asyncio.run(run())


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Starts servers on demand; stops them all at the end of the module. `serve.again(served)`
    starts the same server again (its database, key and settings) once the first has stopped: a
    restart, or a second instance."""
    processes: list[subprocess.Popen] = []

    def launch(env: dict[str, str], port: int) -> tuple[subprocess.Popen, str]:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--port", str(port)], cwd=PROJECT_DIR, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        base_url = f"http://127.0.0.1:{port}"
        wait_until_healthy(process, base_url, timeout_seconds=STARTUP_TIMEOUT_SECONDS)
        return process, base_url

    def again(served: Served) -> Served:
        process, base_url = launch(served.env, free_port())
        return dataclasses.replace(served, base_url=base_url, process=process)

    def start(**extra_env: str) -> Served:
        workdir = tmp_path_factory.mktemp("served")
        port = free_port()
        env = child_environment(**{
            "DJANGO_ENV": "development",
            "LOG_FILE": str(workdir / "app.log"),
            "SERVER_PORT": str(port),
            "WEB_CONCURRENCY": "2",
            "ACCESS_LOG": "false",
            # Tests change the fake upstream's model list: ask it every time.
            "LLM_MODEL_LIST_SECONDS": "0",
            "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
            **extra_env,
        })
        manage("migrate", "--noinput", env=env)
        api_key = manage("create_api_key", "--name", "e2e", env=env).strip().splitlines()[-1]
        process, base_url = launch(env, port)
        return Served(
            base_url=base_url, api_key=api_key, database=workdir / "db.sqlite3", log_file=workdir / "app.log", env=env,
            process=process,
        )

    start.again = again  # type: ignore[attr-defined]
    yield start
    stop(*processes)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for a served test, dropped afterwards; skipped without PostgreSQL."""
    try:
        url, drop = fresh_postgres_database(POSTGRES_ADMIN_URL, f"llmserver_e2e_{os.getpid()}")
    except psycopg.OperationalError:
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    yield url
    drop()


@pytest.fixture(scope="module")
def redis_url() -> str:
    """Redis database 15 on 127.0.0.1:6379, emptied first; skipped without Redis."""
    import redis

    url = "redis://127.0.0.1:6379/15"
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.flushdb()
    except redis.ConnectionError:
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    finally:
        client.close()
    return url


@pytest.fixture
def upstream(fake_upstream_server: FakeUpstream) -> Iterator[FakeUpstream]:
    """The fake upstream the served servers call, empty at the start of each test and after it."""
    fake_upstream_server.reset()
    yield fake_upstream_server
    fake_upstream_server.reset()


@pytest.fixture(scope="module")
def offline_server(serve) -> Served:
    return serve()


@pytest.fixture(scope="module")
def upstream_server(serve, fake_upstream_server: FakeUpstream) -> Served:
    return serve(OPENAI_BASE_URL=fake_upstream_server.base_url, OPENAI_API_KEY=UPSTREAM_TEST_KEY)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The served server's database, for tests that must hold on both: a SQLite file, then a fresh
    PostgreSQL database (skipped where PostgreSQL is not running)."""
    if request.param == "postgresql":
        return {"DATABASE_URL": request.getfixturevalue("postgres_url")}
    return {}


# --- Talking to a served server -----------------------------------------------------------------


def parse_events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event name, decoded data) for each server-sent event."""
    event, data = "message", []
    for line in lines:
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            data.append(line[len("data: "):])
        elif line == "" and data:
            yield event, json.loads("\n".join(data))
            event, data = "message", []


def stream_chat(served: Served, **body: Any) -> tuple[httpx.Response, list[tuple[str, Any]]]:
    with httpx.stream(
        "POST", f"{served.base_url}/api/v1/chat", json={**body, "stream": True}, headers=served.headers(), timeout=30
    ) as response:
        if response.headers["content-type"].startswith("application/json"):
            response.read()
            return response, []
        return response, list(parse_events(response.iter_lines()))


def session_results(served: Served, session_id: str, what: str) -> list[dict]:
    """One page of a session's `messages` or `usage`, as the API shows them."""
    response = httpx.get(f"{served.base_url}/api/v1/sessions/{session_id}/{what}", headers=served.headers(), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def eventually(check, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)
