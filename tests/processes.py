"""Starting and stopping the server's processes, for the served tests (tests/served.py) and the
benchmarks (bench/): the standard library and psycopg only, because `make bench` installs only
the runtime requirements (no pytest, no httpx)."""

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable

import psycopg


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(process: subprocess.Popen, base_url: str, *, timeout_seconds: float = 30) -> None:
    """Until `GET /api/v1/system/health` answers. Raises RuntimeError, with the process stopped,
    if it exits or does not answer in time (a failed start must not leave a server behind)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/api/v1/system/health", timeout=1):
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
