"""The soak's report (bench/soak.py): what the clients saw, what the server recorded in its database
and what the fake upstream did, compared, each comparison a check."""

import json
import sqlite3
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil

from bench.harness import line
from bench.soak_clients import FAILED, KINDS, PARTIAL, SUCCESS, Answer
from bench.soak_disruptions import Disruption
from tests.support.processes import POSTGRES_ADMIN_URL

# What a turn's stored question becomes, by the outcome of its usage record (chat/turns/steps.py).
QUESTION_STATUS = {SUCCESS: "complete", FAILED: "failed", PARTIAL: "incomplete", "interrupted": "failed"}


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


def settle(url: str, lease_seconds: float) -> float:
    """Wait until no usage record is in flight (the sweep has closed the turns of the killed worker,
    which takes a lease period and up to half another), at most three lease periods. Returns the
    seconds waited."""
    started = time.monotonic()
    while query(url, "SELECT COUNT(*) FROM chat_usagerecord WHERE outcome = 'in_flight'")[0][0]:
        if time.monotonic() - started > 3 * lease_seconds:
            break
        time.sleep(0.5)
    return time.monotonic() - started


def log_lines(log_file: Path, request_id: str, limit: int = 6) -> list[str]:
    if not log_file.exists():
        return []
    return [text.rstrip() for text in log_file.read_text(errors="replace").splitlines() if request_id in text][:limit]


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
    disruptions: list[Disruption] = field(default_factory=list)

    @property
    def lost(self) -> list[Answer]:
        """The answers lost with a killed worker: its connections broke as it died."""
        kills = [d.began for d in self.disruptions if "killed" in d.name]
        return [a for a in self.answers if a.status == 0 and any(0 <= a.ended - kill < 2 for kill in kills)]


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
    lost = set(map(id, run.lost))
    others = [a for a in answers if a.unexpected and not a.unmapped_server_error and id(a) not in lost]
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

    # Request by request (each record carries its request's X-Request-Id): a readable answer has
    # exactly the record it implies; one lost with a killed worker has none, or one the sweep
    # closed as interrupted; and no record belongs to no request.
    by_request = {request_id: (outcome, code) for request_id, outcome, code in query(
        url, "SELECT request_id, outcome, error_code FROM chat_usagerecord")}
    lost = set(map(id, run.lost))
    wrong = [a for a in answers if id(a) not in lost and by_request.get(a.request_id) != a.record]
    strays = set(by_request) - {a.request_id for a in answers}
    # (A turn whose answer was lost may have no record, an interrupted one, or any other: its worker
    # may have died before the call, during it, or after its end was written.)
    checks.add("one usage record per turn, with its outcome and error code (request by request)",
               not wrong and not strays,
               f"{len(wrong)} answers with another record than their own, {len(strays)} records of no request; "
               f"{len(run.lost)} answers lost with the killed worker: "
               + ", ".join(f"{record or 'no record'}: {count}" for record, count in
                           Counter(by_request.get(a.request_id) for a in run.lost).most_common()))
    show_evidence(wrong, run.log_file, "answers whose usage record is not the one they imply")

    # Usage records = upstream calls: every record's request reached the fake, once (no retries),
    # and every call has its record. A turn whose worker was killed between writing its record
    # and sending its call has a record of a call never made: reported, and counted apart.
    called = Counter(call["request_id"] for call in fake["calls"])
    never_called = [rid for rid, record in by_request.items() if rid not in called]
    unrecorded = [rid for rid in called if rid not in by_request]
    line("chat completions the fake received / records", f"{fake['chat_completions']} / {total}")
    line("records of calls never sent (their worker killed in between)", str(len(never_called)))
    honest_never_called = all(by_request[rid] == ("interrupted", "interrupted") for rid in never_called)
    if run.config["max_retries"]:
        checks.add("every call has its record", not unrecorded and honest_never_called,
                   f"{len(unrecorded)} calls without a record")
    else:
        checks.add("usage records = upstream calls (one call per record)",
                   not unrecorded and honest_never_called and all(count == 1 for count in called.values())
                   and fake["chat_completions"] == total - len(never_called),
                   f"{fake['chat_completions']} calls, {total} records, of which {len(never_called)} of calls never "
                   "sent")

    _, prompt, completion, estimated = records.get((SUCCESS, ""), (0, 0, 0, 0))
    successes = [a for a in answers if a.record == (SUCCESS, "") and a.usage]
    seen = (sum(a.usage[0] for a in successes), sum(a.usage[1] for a in successes))
    fake_usage = {c["request_id"]: tuple(c["usage"]) for c in fake["calls"] if c["usage"] is not None}
    # What the fake reported for the calls recorded as successes (a call whose answer was lost with
    # the killed worker may have been answered in full, and is recorded as interrupted).
    recorded_successes = [rid for rid, record in by_request.items() if record == (SUCCESS, "")]
    reported = tuple(sum(fake_usage.get(rid, (0, 0))[i] for rid in recorded_successes) for i in (0, 1))
    lost_successes = [a for a in run.lost if by_request.get(a.request_id) == (SUCCESS, "")]
    seen_or_lost = (seen[0] + sum(fake_usage.get(a.request_id, (0, 0))[0] for a in lost_successes),
                    seen[1] + sum(fake_usage.get(a.request_id, (0, 0))[1] for a in lost_successes))
    line("success tokens (prompt + completion): records", f"{prompt} + {completion} = {prompt + completion}")
    line("success tokens: as the clients saw them", f"{seen[0]} + {seen[1]} = {sum(seen)}"
         + (f" (and {len(lost_successes)} answers lost with the worker)" if lost_successes else ""))
    line("success tokens: as the fake reported them for those calls",
         f"{reported[0]} + {reported[1]} = {sum(reported)}, in {fake['usage_reported']} responses in all")
    checks.add("success tokens: records == clients == fake",
               (prompt, completion) == seen_or_lost == reported and estimated == 0
               and all(rid in fake_usage for rid in recorded_successes),
               f"{estimated} success records estimated; {len(recorded_successes)} success records, "
               f"{sum(rid in fake_usage for rid in recorded_successes)} with usage reported by the fake")
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
    # Each stored question as its record says its turn ended (the record names its question).
    expected_questions = Counter(QUESTION_STATUS[outcome] for outcome, in query(
        url, "SELECT outcome FROM chat_usagerecord WHERE user_message_id IS NOT NULL"))
    line("questions stored, by status (as their records say)",
         ", ".join(f"{status} {questions[status]} ({expected_questions[status]})"
                   for status in sorted(set(questions) | set(expected_questions))))
    checks.add("no question left pending; each stored as its turn ended", questions == expected_questions)
    leased = query(url, "SELECT COUNT(*) FROM chat_chatsession WHERE turn_started_at IS NOT NULL")[0][0]
    checks.add("no session left leased (by a turn, dead or alive)", leased == 0, f"{leased} leased")
