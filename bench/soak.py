"""Soak: many concurrent clients for minutes against an upstream that fails some of its calls.

The issue asked for "200 concurrent clients for 2 minutes with 5% upstream failures — no 5xx
other than the mapped upstream ones, database connections bounded, usage totals equal to the
calls made". Those are the defaults.

Starts, as separate processes and with bench/chat_throughput.py's helpers: the fake upstream
(`python -m tests.fake_upstream --fail-rate F --seed S`), which answers that fraction of chat
completions with a random fault (500, 502, 503, 429 with Retry-After, a connection dropped
mid-body or mid-stream, malformed JSON, a reply that never comes); and the server in its
production configuration (`manage.py serve`, DJANGO_ENV=production, `--workers` uvicorn
workers: 2, as docker-compose.prod.yml runs) on PostgreSQL and Redis when they run here, else
SQLite. The fake takes `--latency-ms` (100) over each chat completion, as a model would take
some time. Then, from this process,
each client sends one chat after another until the time is up, in sessions of its own (a new
one every 10 turns), so that none is ever refused as busy: 40% on POST /api/v1/chat answered
whole, 40% streamed, 10% on POST /v1/chat/completions whole and 10% streamed (half of those
stateless, half with X-Session-Id). Each request carries its own X-Request-Id, which the server
logs and passes upstream, so that the fake's calls and the server's log lines can be matched to
what each client saw. The key has no limits.

The server runs with LLM_TIMEOUT_SECONDS=2 (`--timeout`), so that a hung reply ends in 2 s, and
LLM_MAX_RETRIES=0 (`--max-retries`): every injected fault then reaches a client, and each turn
is exactly one upstream call, so that the counts below compare exactly. With `--max-retries 2`
(the server's default) the server asks upstream again after some of the faults (which ones is
chat/providers' business); the fake then receives more calls than there were turns, and that
one comparison becomes "at least".

Prints figures: answers by endpoint, HTTP status and error code (an error after a stream
started is an `error` event in a 200 answer: "in stream"); which answer each injected fault
produced; throughput and latency; database connections (PostgreSQL's pg_stat_activity for the
server's database, sampled every 0.5 s) against the bound the server's own settings give
(WEB_CONCURRENCY x the pool's max_size); the peak memory of the server's processes.

Then checks, and exits with status 1 when one fails:
1. no 5xx, and no error event in a stream, other than the server's upstream error codes;
2. nothing else unexpected: no other 4xx, no answer cut off or unreadable, no client timeout;
3. (PostgreSQL) the peak of database connections is within the bound;
4. usage records: one per turn that reached upstream, as the clients saw it. A turn reached
   upstream when the server answered it with a success, or with an upstream error code, before
   or within a stream. Its record must say how it ended: outcome `success` for a success,
   `failed` with that error code for an error answered before the stream started, `partial`
   with that code for an error event after it started. So: the records counted by (outcome,
   error code) equal the answers counted the same way; and (with no retries) the chat
   completions the fake received equal the records;
5. tokens: the prompt and completion tokens of the `success` records (none of them estimated)
   equal the sums of the `usage` the clients saw in those answers, and the sums the fake
   reported in responses it sent in full; `failed` records carry 0 tokens. A `partial`
   record's tokens are the server's own count of what was streamed before the cut
   (usage_estimated): printed, not compared, since upstream never reported them;
6. totals kept beside the records: the daily roll-ups (per key, and for all keys) add up to the
   records (requests and tokens), and the sessions' token totals to the records of their turns;
7. messages: no question left pending; the questions of stored turns are complete, failed or
   incomplete exactly as many times as those turns succeeded, failed or were cut short.

    .venv/bin/python bench/soak.py                                  # 200 clients, 120 s, 5% faults
    .venv/bin/python bench/soak.py --clients 20 --seconds 15 --database sqlite

When a check fails, the server's log is kept (its path is printed) and the request ids of a
few offending answers are printed with the log lines written for them.
"""

import argparse
import asyncio
import json
import random
import resource
import secrets
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import uvloop

from chat_throughput import (
    MODEL,
    POSTGRES_ADMIN_URL,
    TURNS_PER_SESSION,
    USER_MESSAGE,
    Connection,
    MemoryWatch,
    Outcome,
    Target,
    database_url,
    free_port,
    line,
    manage,
    server_env,
    start_fake_upstream,
    start_server,
    stop,
)
from tests.fake_upstream import FAULTS  # noqa: E402  (chat_throughput put the project on the path)

# The server's upstream error codes (llmserver/errors.py, the UpstreamError subclasses): the
# only ones a 5xx, or an error event in a stream, may carry here.
UPSTREAM_ERROR_CODES = frozenset({
    "upstream_error", "upstream_bad_response", "upstream_unavailable", "upstream_timeout",
    "upstream_interrupted", "upstream_rate_limited", "upstream_auth_failed", "upstream_rejected_request",
})
# Each kind of request, and how often a client sends it.
KINDS = {"api": 0.4, "api stream": 0.4, "v1": 0.1, "v1 stream": 0.1}
MAX_TOKENS = 200
# A failed or partial usage record's error code is the answer's; a success has none.
SUCCESS, FAILED, PARTIAL = "success", "failed", "partial"
# What a turn's stored question becomes, by the outcome of its usage record (chat/services.py).
QUESTION_STATUS = {SUCCESS: "complete", FAILED: "failed", PARTIAL: "incomplete"}
SETTINGS_QUERY = """
import json
from django.conf import settings
database = settings.DATABASES["default"]
print(json.dumps({
    "engine": database["ENGINE"], "conn_max_age": database.get("CONN_MAX_AGE"),
    "pool": database.get("OPTIONS", {}).get("pool"), "workers": settings.WEB_CONCURRENCY,
    "timeout": settings.LLM_TIMEOUT_SECONDS, "max_retries": settings.LLM_MAX_RETRIES,
}))
"""


# --- What each client saw -------------------------------------------------------------------


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

    @property
    def label(self) -> str:
        if self.status == 0:
            return f"client: {self.error_code}"
        return f"{self.status} {self.error_code or '-'}{' (in stream)' if self.in_stream else ''}"

    @property
    def unmapped_server_error(self) -> bool:
        """A 5xx, or an error event in a stream, without an upstream error code."""
        return (self.status >= 500 or self.in_stream) and self.error_code not in UPSTREAM_ERROR_CODES

    @property
    def unexpected(self) -> bool:
        """Neither a success nor an upstream error."""
        if self.status == 200:
            return self.record is None
        return self.error_code not in UPSTREAM_ERROR_CODES


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
        tally.answers.append(answer)
        tally.recent += 1
    if connection is not None:
        connection.close()


# --- What the processes did -----------------------------------------------------------------


class ConnectionWatch:
    """Counts the connections to one PostgreSQL database every 0.5 s (pg_stat_activity), from a
    connection to another database, so that it does not count itself."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            while not self._stop.is_set():
                row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.database,))
                self.samples.append(row.fetchone()[0])
                self._stop.wait(0.5)

    def __enter__(self) -> "ConnectionWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def tree_rss(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def fake_stats(port: int, *, calls: bool = False) -> dict[str, Any]:
    """The fake's GET /stats, once it has finished every chat completion it received."""
    deadline = time.monotonic() + 15
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats{'?calls=1' if calls else ''}", timeout=10) as r:
            stats = json.load(r)
        if stats["in_flight"] == 0 or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


def query(url: str, sql: str) -> list[tuple]:
    """Rows of one query on the server's database, read directly (not through the server);
    PostgreSQL's sums (numeric) as ints."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as database:
            return database.execute(sql).fetchall()
    import psycopg

    with psycopg.connect(url) as database:
        rows = database.execute(sql).fetchall()
    return [tuple(int(v) if isinstance(v, Decimal) else v for v in row) for row in rows]


def log_lines(log_file: Path, request_id: str, limit: int = 6) -> list[str]:
    if not log_file.exists():
        return []
    return [text.rstrip() for text in log_file.read_text(errors="replace").splitlines() if request_id in text][:limit]


# --- The soak -------------------------------------------------------------------------------


@dataclass
class Checks:
    results: list[tuple[str, bool, str]] = field(default_factory=list)

    def add(self, name: str, passed: bool, detail: str = "") -> None:
        self.results.append((name, passed, detail))

    @property
    def failed(self) -> int:
        return sum(not passed for _, passed, _ in self.results)


def percentile(values: list[float], q: int) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))] * 1000 if values else float("nan")


def show_evidence(answers: list[Answer], log_file: Path, title: str) -> None:
    """A few request ids of `answers`, each with the server's log lines written for it."""
    if not answers:
        return
    print(f"  {title}: {len(answers)}; the first few, with the server's log lines for each:")
    for answer in answers[:5]:
        print(f"    {answer.request_id} ({answer.kind}): {answer.label}")
        for text in log_lines(log_file, answer.request_id):
            print(f"      | {text[:300]}")


@dataclass
class Run:
    """What one soak saw, for the report."""

    database: str
    url: str
    config: dict[str, Any]
    log_file: Path
    answers: list[Answer]
    elapsed: float
    fake: dict[str, Any]  # the fake upstream's GET /stats?calls=1
    connections: list[int]  # samples of the server's database connections (PostgreSQL)
    memory: tuple[int, int, int]  # RSS of the server's processes: at start, peak, at end


def report_answers(run: Run, checks: Checks) -> None:
    answers = run.answers
    print(f"\n2. Answers: {len(answers)} in {run.elapsed:.1f} s ({len(answers) / run.elapsed:.0f}/s)")
    by_label: dict[str, Counter] = defaultdict(Counter)
    for answer in answers:
        by_label[answer.label][answer.kind] += 1
    print(f"  {'status error code':<44}" + "".join(f"{kind:>12}" for kind in KINDS) + f"{'all':>9}")
    for label in sorted(by_label, key=lambda text: (text.startswith("client"), text)):
        counts = by_label[label]
        print(f"  {label:<44}" + "".join(f"{counts[kind]:>12}" for kind in KINDS) + f"{sum(counts.values()):>9}")
    seconds = [a.seconds for a in answers if a.record == (SUCCESS, "")]
    line("successes: p50 / p99 / slowest",
         f"{percentile(seconds, 50):.0f} / {percentile(seconds, 99):.0f} / {percentile(seconds, 100):.0f} ms")
    failures = len(answers) - len(seconds)
    line("answers that were not a success", f"{failures} ({failures / max(len(answers), 1):.1%})")

    # What each injected fault became, matched by request id (with retries, a request id has
    # several calls: their behaviours are joined with "+").
    behaviours_of: dict[str, list[str]] = defaultdict(list)
    for call in run.fake["calls"]:
        behaviours_of[call["request_id"]].append(call["behaviour"])
    became: dict[str, Counter] = defaultdict(Counter)
    for answer in answers:
        became["+".join(behaviours_of.get(answer.request_id, ["(no upstream call)"]))][answer.label] += 1
    print("\n  What the fake upstream did, and what the clients were answered:")
    for behaviour in sorted(became, key=lambda name: (name != "success", name)):
        results = ", ".join(f"{label}: {count}" for label, count in became[behaviour].most_common())
        print(f"    {behaviour:<22} {results}")

    unmapped = [a for a in answers if a.unmapped_server_error]
    server_errors = sum(a.status >= 500 or a.in_stream for a in answers)
    checks.add("no 5xx (nor error event) but the upstream error codes", not unmapped,
               f"{len(unmapped)} of {server_errors}" if unmapped else
               f"{server_errors} 5xx or error events, all with an upstream error code")
    show_evidence(unmapped, run.log_file, "5xx without an upstream error code")
    others = [a for a in answers if a.unexpected and not a.unmapped_server_error]
    checks.add("nothing else unexpected (other 4xx, unreadable answers, client timeouts)", not others,
               ", ".join(f"{label}: {count}" for label, count in Counter(a.label for a in others).items()) or "none")
    show_evidence(others, run.log_file, "unexpected answers")


def report_resources(run: Run, checks: Checks) -> None:
    print("\n3. Resources")
    pool = run.config["pool"]
    if pool and run.connections:
        bound = run.config["workers"] * pool["max_size"]
        peak, mean = max(run.connections), sum(run.connections) / len(run.connections)
        line("database connections: peak / mean",
             f"{peak} / {mean:.1f} over {len(run.connections)} samples (every 0.5 s)")
        line("bound: WEB_CONCURRENCY x the pool's max_size",
             f"{run.config['workers']} x {pool['max_size']} = {bound} (min_size {pool.get('min_size')}, "
             f"CONN_MAX_AGE {run.config['conn_max_age']})")
        checks.add("database connections within the bound", peak <= bound, f"peak {peak}, bound {bound}")
    else:
        line("database connections", "not applicable on SQLite (a file: no server, no connections to count)")
    start, peak, end = run.memory
    line("server memory (all processes): at start / peak / at end",
         f"{start / 2**20:.0f} / {peak / 2**20:.0f} / {end / 2**20:.0f} MiB")


def report_usage(run: Run, checks: Checks) -> None:
    print("\n4. Usage: what the clients saw, the server recorded, and the fake upstream reported")
    answers, fake, url = run.answers, run.fake, run.url
    # (outcome, error code) -> (records, prompt tokens, completion tokens, estimated records)
    records = {(outcome, code): rest for outcome, code, *rest in query(url, """
        SELECT outcome, error_code, COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),
               SUM(CASE WHEN usage_estimated THEN 1 ELSE 0 END)
        FROM chat_usagerecord GROUP BY outcome, error_code""")}
    recorded = Counter({key: count for key, (count, *_) in records.items()})
    expected = Counter(a.record for a in answers if a.record is not None)
    print(f"    {'usage record (outcome, error code)':<44}{'clients saw':>12}{'recorded':>10}"
          f"{'prompt':>10}{'completion':>12}{'estimated':>11}")
    for key in sorted(set(recorded) | set(expected)):
        _, prompt, completion, estimated = records.get(key, (0, 0, 0, 0))
        print(f"    {key[0] + ' ' + (key[1] or '-'):<44}{expected[key]:>12}{recorded[key]:>10}"
              f"{prompt:>10}{completion:>12}{estimated:>11}")
    total = recorded.total()
    line("usage records / turns that reached upstream (clients)", f"{total} / {expected.total()}")
    unreadable = sum(a.status == 0 or a.status == 200 and a.record is None for a in answers)
    checks.add("one usage record per turn, with its outcome and error code", recorded == expected,
               f"{total} records, {expected.total()} turns"
               + (f"; {unreadable} answers unreadable, their records unpredictable" if unreadable else ""))
    line("chat completions the fake received / records", f"{fake['chat_completions']} / {total}")
    if run.config["max_retries"]:
        checks.add("the fake received at least one call per record", fake["chat_completions"] >= total,
                   f"{fake['chat_completions']} calls, {total} records")
    else:
        checks.add("the fake received one call per record", fake["chat_completions"] == total,
                   f"{fake['chat_completions']} calls, {total} records")
    if fake["chat_completions"] != total:
        calls_by_request = Counter(call["request_id"] for call in fake["calls"])
        show_evidence([a for a in answers if a.record is not None and a.request_id not in calls_by_request],
                      run.log_file, "turns with a usage record that the fake never received")
        show_evidence([a for a in answers if calls_by_request[a.request_id] > 1],
                      run.log_file, "turns the fake received more than once")

    _, prompt, completion, estimated = records.get((SUCCESS, ""), (0, 0, 0, 0))
    successes = [a for a in answers if a.record == (SUCCESS, "") and a.usage]
    seen = (sum(a.usage[0] for a in successes), sum(a.usage[1] for a in successes))
    reported = (fake["prompt_tokens"], fake["completion_tokens"])
    line("success tokens (prompt + completion): records", f"{prompt} + {completion} = {prompt + completion}")
    line("success tokens: as the clients saw them", f"{seen[0]} + {seen[1]} = {sum(seen)}")
    line("success tokens: as the fake reported them",
         f"{reported[0]} + {reported[1]} = {sum(reported)}, in {fake['usage_reported']} responses")
    checks.add("success tokens: records == clients == fake",
               (prompt, completion) == seen == reported and estimated == 0
               and fake["usage_reported"] == recorded[(SUCCESS, "")],
               f"{estimated} success records estimated; the fake reported usage {fake['usage_reported']} times, "
               f"for {recorded[(SUCCESS, '')]} success records")
    fake_usage = {c["request_id"]: tuple(c["usage"]) for c in fake["calls"] if c["usage"] is not None}
    show_evidence([a for a in successes if a.usage != fake_usage.get(a.request_id)], run.log_file,
                  "successes whose usage differs from what the fake reported for them")
    failed_tokens = sum(p + c for (outcome, _), (_n, p, c, _e) in records.items() if outcome == FAILED)
    checks.add("failed records carry no tokens", failed_tokens == 0, f"{failed_tokens} tokens")
    partial = [value for (outcome, _), value in records.items() if outcome == PARTIAL]
    line("partial records: tokens (the server's own count)",
         f"{sum(p for _, p, _c, _e in partial)} + {sum(c for _, _p, c, _e in partial)}; "
         f"{sum(e for *_, e in partial)} of {sum(n for n, *_ in partial)} records estimated")

    all_records = query(url, "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) "
                             "FROM chat_usagerecord")[0]
    for table in ("chat_usagedaily", "chat_usagedailytotal"):
        totals = query(url, "SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(prompt_tokens), 0), "
                            f"COALESCE(SUM(completion_tokens), 0) FROM {table}")[0]
        line(f"{table}: requests, prompt, completion", f"{totals} (records: {all_records})")
        checks.add(f"{table} adds up to the records", totals == all_records)
    sessions = query(url, "SELECT COALESCE(SUM(prompt_tokens_total), 0), COALESCE(SUM(completion_tokens_total), 0) "
                          "FROM chat_chatsession")[0]
    of_sessions = query(url, "SELECT COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) "
                             "FROM chat_usagerecord WHERE session_id IS NOT NULL")[0]
    line("sessions' token totals: prompt, completion", f"{sessions} (their records: {of_sessions})")
    checks.add("sessions' totals add up to their records", sessions == of_sessions)

    questions = Counter({status: count for status, count in query(
        url, "SELECT status, COUNT(*) FROM chat_message WHERE role = 'user' GROUP BY status")})
    expected_questions = Counter(QUESTION_STATUS[a.record[0]] for a in answers if a.stored and a.record)
    line("questions stored, by status (clients' turns)",
         ", ".join(f"{status} {questions[status]} ({expected_questions[status]})"
                   for status in sorted(set(questions) | set(expected_questions))))
    checks.add("no question left pending; each stored as its turn ended", questions == expected_questions)


async def soak(args: argparse.Namespace, workdir: Path) -> bool:
    """Runs the soak and prints what it saw; True when every check passed."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    fake, fake_url, fake_port = start_fake_upstream(
        args.latency_ms, "--fail-rate", str(args.fail_rate), "--seed", str(seed)
    )
    url, database, drop_database = database_url(args.database, workdir)
    env, cache = server_env(database_url=url, database=database, upstream_url=fake_url, workers=args.workers,
                            workdir=workdir)
    env |= {
        "LLM_TIMEOUT_SECONDS": str(args.timeout),
        "LLM_MAX_RETRIES": str(args.max_retries),
        # No limit may refuse a turn: the key gets the server's defaults, set here to unlimited.
        "LIMIT_REQUESTS_PER_MINUTE": "0", "LIMIT_TOKENS_PER_DAY": "0", "LIMIT_MONTHLY_BUDGET_USD": "0",
    }
    processes = [fake]
    try:
        manage(env, "migrate", "--noinput")
        api_key = manage(env, "create_api_key", "--name", "soak").strip().splitlines()[-1]
        # The settings as the server reads them from this environment.
        config = json.loads(manage(env, "shell", "--no-imports", "-c", SETTINGS_QUERY).strip().splitlines()[-1])
        port = free_port()
        server = start_server(env, port)
        processes.append(server)
        print(f"LLM Server soak: {args.clients} clients for {args.seconds:g} s, {args.fail_rate:.0%} of upstream "
              f"calls failing (seed {seed}); {psutil.cpu_count()} CPUs, {database}, cache {cache}, "
              f"{config['workers']} worker(s), DJANGO_ENV=production, uvicorn")
        line("server settings", f"LLM_TIMEOUT_SECONDS={config['timeout']:g}, LLM_MAX_RETRIES={config['max_retries']}, "
             f"CONN_MAX_AGE={config['conn_max_age']}, pool={json.dumps(config['pool'])}")
        line("fake upstream", f"{args.latency_ms:g} ms per chat completion; faults: {', '.join(FAULTS)}")
        line("mix", ", ".join(f"{share:.0%} {kind}" for kind, share in KINDS.items())
             + " (v1: half stateless, half X-Session-Id)")
        line("server log", env["LOG_FILE"])

        run_id = secrets.token_hex(3)
        auth = {"Authorization": f"Bearer {api_key}"}

        def session(c: int, n: int) -> str:
            return f"{run_id}-{c}-{n // TURNS_PER_SESSION}"

        def v1_body(stream: bool) -> dict[str, Any]:
            body = {"model": MODEL, "messages": [{"role": "user", "content": USER_MESSAGE}], "max_tokens": MAX_TOKENS}
            return body | {"stream": True, "stream_options": {"include_usage": True}} if stream else body

        targets = {
            "api": Target("127.0.0.1", port, "/api/v1/chat", auth, lambda c, n: {
                "session_id": session(c, n), "user_message": USER_MESSAGE, "max_tokens": MAX_TOKENS}),
            "api stream": Target("127.0.0.1", port, "/api/v1/chat", auth, lambda c, n: {
                "session_id": session(c, n), "user_message": USER_MESSAGE, "max_tokens": MAX_TOKENS, "stream": True}),
            "v1": Target("127.0.0.1", port, "/v1/chat/completions", auth, lambda c, n: v1_body(False)),
            "v1 stream": Target("127.0.0.1", port, "/v1/chat/completions", auth, lambda c, n: v1_body(True)),
        }
        # The longest the server may take over a turn (chat/services.py, upstream_deadline_seconds),
        # and as much again: a client that waits longer has been left hanging.
        client_timeout = 2 * (config["timeout"] * (config["max_retries"] + 1) + 30)

        print(f"\n1. Under load (a line every {args.progress:g} s)")
        tally = Tally()
        rss_start = tree_rss(server.pid)
        watch = ConnectionWatch(url.rsplit("/", 1)[1]) if config["pool"] else None
        started = time.perf_counter()

        async def progress() -> None:
            while True:
                await asyncio.sleep(args.progress)
                errors = sum(a.status != 200 or a.in_stream for a in tally.answers)
                unexpected = sum(a.unexpected for a in tally.answers)
                connections = f", {watch.samples[-1]} database connections" if watch and watch.samples else ""
                print(f"  {time.perf_counter() - started:5.0f} s: {len(tally.answers)} answers "
                      f"({tally.recent / args.progress:.0f}/s), {errors} errors ({unexpected} unexpected)"
                      f"{connections}, server RSS {tree_rss(server.pid) / 2**20:.0f} MiB", flush=True)
                tally.recent = 0

        with MemoryWatch(server.pid) as memory, watch or nullcontext():
            reporter = asyncio.ensure_future(progress())
            try:
                await asyncio.gather(*(
                    run_client(n, targets=targets, run_id=run_id, seed=seed, deadline=started + args.seconds,
                               timeout=client_timeout, tally=tally)
                    for n in range(args.clients)
                ))
            finally:
                reporter.cancel()
        run = Run(
            database=database, url=url, config=config, log_file=Path(env["LOG_FILE"]), answers=tally.answers,
            elapsed=time.perf_counter() - started, fake=fake_stats(fake_port, calls=True),
            connections=watch.samples if watch else [], memory=(rss_start, memory.peak, tree_rss(server.pid)),
        )
        checks = Checks()
        report_answers(run, checks)
        report_resources(run, checks)
        report_usage(run, checks)
        print("\nChecks")
        for name, passed, detail in checks.results:
            print(f"  {'PASS' if passed else 'FAIL'}  {name}{': ' + detail if detail else ''}")
        return checks.failed == 0
    finally:
        stop(*reversed(processes))
        drop_database()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long they send requests")
    parser.add_argument("--fail-rate", type=float, default=0.05, help="fraction of upstream calls that fail")
    parser.add_argument("--seed", type=int, default=None, help="seed of the faults and the request mix (random)")
    parser.add_argument("--database", choices=["auto", "sqlite", "postgres"], default="auto",
                        help="auto: PostgreSQL when it runs here, else SQLite")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (WEB_CONCURRENCY)")
    parser.add_argument("--timeout", type=float, default=2.0, help="the server's LLM_TIMEOUT_SECONDS")
    parser.add_argument("--max-retries", type=int, default=0, help="the server's LLM_MAX_RETRIES")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="the fake upstream's time per chat completion")
    parser.add_argument("--progress", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument("--keep-log", action="store_true", help="keep the server's log even when every check passed")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="llmserver-soak-"))
    passed = False
    try:
        passed = uvloop.run(soak(args, workdir))
    finally:
        if passed and not args.keep_log:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"\nThe server's log is kept in {workdir / 'app.log'}")
    print("All checks passed." if passed else "Some checks failed.")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
