"""What the benchmarks share: a small HTTP/1.1 load generator on raw asyncio sockets (a few
microseconds per request, so that it takes as little as possible of the cores from the server), and
the processes they start: the fake upstream, and the server in its production configuration
(DJANGO_ENV=production, `manage.py serve`: uvicorn, the same command as `make run` and the Docker
image) on PostgreSQL and Redis when they run here, else SQLite.

The benchmarks run as modules from the project's directory (`python -m bench.chat_throughput`, as
`make bench` does), so that they import the tests' process helpers as a package.
"""

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.support.processes import (
    POSTGRES_ADMIN_URL,
    PROJECT_DIR,
    child_environment,
    fresh_postgres_database,
    run_manage,
    wait_until_healthy,
)

PYTHON = sys.executable
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
MODEL = "gpt-4o-mini"
USER_MESSAGE = "Hello there! What can you tell me about the weather on Mars today?"
TURNS_PER_SESSION = 10


def argument_parser(description: str, *, workers: int) -> argparse.ArgumentParser:
    """The options every benchmark that starts a server takes: its database and worker processes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--database", choices=["auto", "sqlite", "postgres"], default="auto",
                        help="auto: PostgreSQL when it runs here, else SQLite")
    parser.add_argument("--workers", type=int, default=workers, help="server worker processes (WEB_CONCURRENCY)")
    return parser


def line(label: str, value: str) -> None:
    print(f"  {label:<58} {value}")


# --- A small HTTP/1.1 client on raw asyncio streams ---------------------------------------------


@dataclass
class Outcome:
    status: int
    total: float
    first_data: float | None
    body: bytes


class Connection:
    """One keep-alive connection; requests one at a time. Reads Content-Length and chunked bodies."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, path: str, body: dict[str, Any] | None, headers: dict[str, str]) -> Outcome:
        """POST `body` as JSON to `path`; GET it when `body` is None."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=2**20)
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        started = time.perf_counter()
        if body is None:
            self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{head}\r\n".encode())
        else:
            payload = json.dumps(body).encode()
            self.writer.write(
                f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n{head}\r\n".encode() + payload
            )
        try:
            return await self._response(started)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.close()
            raise

    async def _response(self, started: float) -> Outcome:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        first_data = None
        if fields.get("transfer-encoding") == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                if first_data is None and b"data:" in chunk:
                    first_data = time.perf_counter() - started
                parts.append(chunk[:-2])
            body = b"".join(parts)
        else:
            body = await self.reader.readexactly(int(fields.get("content-length", "0")))
        if fields.get("connection") == "close":
            self.close()
        return Outcome(status=status, total=time.perf_counter() - started, first_data=first_data, body=body)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Target:
    """Where requests go, and how each one is made."""

    host: str
    port: int
    path: str
    headers: dict[str, str]
    make_body: Any  # (client number, request number) -> dict


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    first_data: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    # Answers by HTTP status ("in stream": an error event in a 200 stream; "none": no answer).
    statuses: Counter = field(default_factory=Counter)
    elapsed: float = 0.0

    @property
    def count(self) -> int:
        return len(self.latencies)

    def p(self, q: int, values: list[float] | None = None) -> float:
        values = sorted(self.latencies if values is None else values)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))] * 1000

    @property
    def rps(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0


async def run_load(
    target: Target, *, clients: int, requests: int | None = None, seconds: float | None = None
) -> Result:
    """`clients` connections, each sending its next request when the last one is answered, until
    `requests` in all have been answered or `seconds` have passed."""
    result = Result()
    issued = 0
    deadline = time.perf_counter() + seconds if seconds else None

    async def client(number: int) -> None:
        nonlocal issued
        connection = Connection(target.host, target.port)
        sequence = 0
        while True:
            if requests is not None and issued >= requests:
                break
            if deadline is not None and time.perf_counter() >= deadline:
                break
            issued += 1
            try:
                outcome = await connection.request(target.path, target.make_body(number, sequence), target.headers)
            except Exception as exc:  # noqa: BLE001 - counted and shown, never hidden
                result.errors += 1
                result.statuses["none"] += 1
                if len(result.error_samples) < 3:
                    result.error_samples.append(repr(exc))
                continue
            finally:
                sequence += 1
            result.statuses["in stream" if b"event: error" in outcome.body else outcome.status] += 1
            if outcome.status != 200 or b"event: error" in outcome.body:
                result.errors += 1
                if len(result.error_samples) < 3:
                    result.error_samples.append(f"{outcome.status} {outcome.body[-300:]!r}")
                continue
            result.latencies.append(outcome.total)
            if outcome.first_data is not None:
                result.first_data.append(outcome.first_data)
        connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    result.elapsed = time.perf_counter() - started
    return result


# --- Processes ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by a process and its children that are alive: the
    server's workers (whose own threads' time is included even once those threads have ended)."""
    root = psutil.Process(pid)
    total = 0.0
    for process in (root, *root.children(recursive=True)):
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


class MemoryWatch:
    """Samples the summed RSS of a process and its children every 50 ms; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.05)

    def __enter__(self) -> "MemoryWatch":
        self.peak = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def start_fake_upstream(latency_ms: float, *options: str) -> tuple[subprocess.Popen, str, int]:
    """`options`: more of its command-line options (`python -m tests.support.fake_upstream --help`)."""
    process = subprocess.Popen(
        [PYTHON, "-m", "tests.support.fake_upstream", "--port", "0", "--latency-ms", str(latency_ms), *options],
        cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = process.stdout.readline()  # type: ignore[union-attr]
    url = line.split("listening on ", 1)[1].strip()
    host_port = url.removeprefix("http://").split("/", 1)[0]
    return process, url, int(host_port.split(":")[1])


def database_url(kind: str, workdir: Path) -> tuple[str, str, Any]:
    """(DATABASE_URL, description, cleanup)."""
    if kind in ("postgres", "auto"):
        try:
            url, drop = fresh_postgres_database(POSTGRES_ADMIN_URL, f"llmserver_bench_{os.getpid()}")
            return url, "PostgreSQL", drop
        except Exception as exc:  # noqa: BLE001
            if kind == "postgres":
                raise SystemExit(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}") from exc
    return f"sqlite:///{workdir / 'bench.sqlite3'}", "SQLite (WAL)", lambda: None


def redis_reachable() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except Exception:  # noqa: BLE001
        return False


def server_env(
    *, database_url: str, database: str, upstream_url: str, workers: int, workdir: Path
) -> tuple[dict[str, str], str]:
    """The server's environment in its production configuration, with Redis as its cache when it
    runs on PostgreSQL and Redis answers; and that cache's name."""
    env = {
        **child_environment(),
        "DJANGO_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "FIELD_ENCRYPTION_KEYS": __import__("cryptography.fernet", fromlist=["Fernet"]).Fernet.generate_key().decode(),
        "DATABASE_URL": database_url,
        "LOG_FILE": str(workdir / "app.log"),
        "WEB_CONCURRENCY": str(workers),
        "OPENAI_BASE_URL": upstream_url,
        "OPENAI_API_KEY": "sk-bench",
        "LLM_DEFAULT_MODEL": MODEL,
        "ACCESS_LOG": "false",
        # Plain HTTP on loopback: production would otherwise redirect every request to HTTPS.
        "SECURE_SSL_REDIRECT": "false",
    }
    if database == "PostgreSQL" and redis_reachable():
        env["REDIS_URL"] = REDIS_URL
        return env, "Redis"
    return env, "local memory"


def manage(env: dict[str, str], *args: str) -> str:
    result = run_manage(*args, env=env, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def start_server(env: dict[str, str], port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [PYTHON, "manage.py", "serve", "--port", str(port)], cwd=PROJECT_DIR, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_healthy(process, f"http://127.0.0.1:{port}")
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    return process
