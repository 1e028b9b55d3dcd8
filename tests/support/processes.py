"""Starting and stopping the server's processes, for the served tests (served.py) and the
benchmarks (bench/): the standard library and psycopg only, because `make bench` installs only
the runtime requirements (no pytest, no httpx)."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent

# Where the throwaway PostgreSQL databases of the served tests and the benches are made.
POSTGRES_ADMIN_URL = os.environ.get("POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

# What a child process takes from ours: how to run Python, never how to configure the server.
INHERITED_VARIABLES = frozenset({"PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH"})


def child_environment(**values: str) -> dict[str, str]:
    """The environment of a server or `manage.py` process that a test or a bench starts: what
    running Python needs from ours, no `.env` file (DOTENV_FILE empty), then `values`. The
    caller's own settings (LIMIT_*, REDIS_URL, METRICS_PUBLIC, an upstream key, in the
    environment or in `.env`) would otherwise change what the child does: a Redis database of
    the developer's flushed, limits that fail a load test."""
    inherited = {
        name: value for name, value in os.environ.items() if name in INHERITED_VARIABLES or name.startswith("LC_")
    }
    return {**inherited, "DOTENV_FILE": "", **values}


def run_manage(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """`manage.py args...` in a child process with `env`, its output captured."""
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(
    process: subprocess.Popen, base_url: str, *, timeout_seconds: float = 30, path: str = "/api/v1/system/health"
) -> None:
    """Until `GET path` answers. Raises RuntimeError, with the process stopped, if it exits or
    does not answer in time (a failed start must not leave a server behind)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}{path}", timeout=1):
                return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError("the server exited during start-up") from None
            if time.monotonic() > deadline:
                stop(process)
                raise RuntimeError("the server did not start in time") from None
            time.sleep(0.2)


def stop(*processes: subprocess.Popen) -> None:
    """Ask every process to stop, then wait for each (killing one that takes over 15 s)."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def fresh_postgres_database(admin_url: str, name: str) -> tuple[str, Callable[[], None]]:
    """A new, empty database `name` beside `admin_url`'s (an old one of that name is dropped
    first): its URL, and the function that drops it. Raises psycopg.OperationalError without
    PostgreSQL."""
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return admin_url.rsplit("/", 1)[0] + f"/{name}", drop


def postgres_cut(database: str, *, refuse_for: float = 0.0) -> None:
    """A database outage, as a server sees it: every connection to `database` terminated and, with
    `refuse_for`, new ones refused that many seconds (then allowed again)."""
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        if refuse_for:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
            time.sleep(refuse_for)
        finally:
            if refuse_for:
                admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
