"""Soak: many concurrent clients for minutes against an upstream that fails some of its calls.

The issue asked for "200 concurrent clients for 2 minutes with 5% upstream failures — no 5xx
other than the mapped upstream ones, database connections bounded, usage totals equal to the
calls made". Those are the defaults.

Starts, as separate processes and with bench/harness.py's helpers: the fake upstream
(`python -m tests.support.fake_upstream --fail-rate F --seed S`), which answers that fraction of chat
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

Meanwhile it disrupts the server (bench/soak_disruptions.py; `--no-disruptions` turns it off): a
third of the way in it kills one worker with SIGKILL, two thirds of the way in (PostgreSQL) it cuts
the database for `--cut-seconds` (every connection terminated, new ones refused). After the run it
waits for the sweep to close the turns the killed worker held (`--lease-seconds` each).

Then checks, and exits with status 1 when one fails:
1. no 5xx, and no error event in a stream, other than the server's upstream error codes and
   the two it answers while the database is away (`database_unavailable`, `server_busy`);
2. nothing else unexpected: no other 4xx, no answer cut off or unreadable, no client timeout,
   except the answers lost with the killed worker (their connections broke as it died);
3. (PostgreSQL) the peak of database connections is within the bound;
4. usage records, request by request (each record carries its request's X-Request-Id): a
   readable answer has exactly the record it implies (outcome `success` for a success, `failed`
   with the error code for an error answered before the stream started, `partial` with it for an
   error event after, none for a refusal that never reached upstream); an answer lost with the
   killed worker has none, one the sweep closed as `interrupted`, or one its turn closed before the
   worker died; no record belongs to no request. And (with no retries) every chat completion the
   fake received has its record, one call per record; a record of a call never sent (its worker
   killed between writing the record and sending the call) must say `interrupted`, and is counted
   apart;
5. tokens: the prompt and completion tokens of the `success` records (none of them estimated)
   equal the sums of the `usage` the clients saw in those answers, and the sums the fake
   reported for those calls; `failed` records carry 0 tokens. A `partial` record's tokens are the
   server's own count of what was streamed before the cut (usage_estimated): printed, not
   compared, since upstream never reported them;
6. totals kept beside the records: the daily roll-ups (per key, and for all keys) add up to the
   records (requests and tokens), and the sessions' token totals to the records of their turns;
7. messages: no question left pending, each stored question as its record says its turn ended;
   no session left leased.

    .venv/bin/python -m bench.soak                                  # 200 clients, 120 s, 5% faults
    .venv/bin/python -m bench.soak --clients 20 --seconds 15 --database sqlite

When a check fails, the server's log is kept (its path is printed) and the request ids of a
few offending answers are printed with the log lines written for them.
"""

import argparse
import asyncio
import json
import resource
import secrets
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import psutil
import uvloop

from bench.harness import (
    MODEL,
    TURNS_PER_SESSION,
    USER_MESSAGE,
    MemoryWatch,
    Target,
    argument_parser,
    database_url,
    line,
    manage,
    server_env,
    start_fake_upstream,
    start_server,
)
from bench.soak_clients import KINDS, Tally, run_client
from bench.soak_disruptions import disrupt
from bench.soak_report import (
    Checks,
    ConnectionWatch,
    Run,
    fake_stats,
    report_answers,
    report_resources,
    report_usage,
    settle,
    tree_rss,
)
from tests.support.fake_upstream import FAULTS
from tests.support.processes import free_port, stop

MAX_TOKENS = 200
# The settings as the server reads them from its environment.
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
        # Short, so that the turns of the killed worker are closed within the run (default 20).
        "CHAT_TURN_LEASE_SECONDS": str(args.lease_seconds),
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
        # The longest the server may take over a turn (chat/sessions/lease.py, upstream_deadline_seconds),
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
            disruptions = asyncio.ensure_future(
                disrupt(server_pid=server.pid, database_url=url, began=started, seconds=args.seconds,
                        cut_seconds=args.cut_seconds)
                if args.disrupt else asyncio.sleep(0, result=[])
            )
            try:
                await asyncio.gather(*(
                    run_client(n, targets=targets, run_id=run_id, seed=seed, deadline=started + args.seconds,
                               timeout=client_timeout, tally=tally)
                    for n in range(args.clients)
                ))
                done = await disruptions
            finally:
                reporter.cancel()
        for disruption in done:
            line(f"at {disruption.began - started:.0f} s", disruption.name)
        settled = await asyncio.to_thread(settle, url, args.lease_seconds)
        line("turns of dead processes closed by the sweep after", f"{settled:.1f} s")
        run = Run(
            database=database, url=url, config=config, log_file=Path(env["LOG_FILE"]), answers=tally.answers,
            elapsed=time.perf_counter() - started, fake=fake_stats(fake_port, calls=True),
            connections=watch.samples if watch else [], memory=(rss_start, memory.peak, tree_rss(server.pid)),
            disruptions=done,
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
    parser = argument_parser(__doc__.split("\n\n")[0], workers=2)
    parser.add_argument("--clients", type=int, default=200, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long they send requests")
    parser.add_argument("--fail-rate", type=float, default=0.05, help="fraction of upstream calls that fail")
    parser.add_argument("--seed", type=int, default=None, help="seed of the faults and the request mix (random)")
    parser.add_argument("--timeout", type=float, default=2.0, help="the server's LLM_TIMEOUT_SECONDS")
    parser.add_argument("--max-retries", type=int, default=0, help="the server's LLM_MAX_RETRIES")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="the fake upstream's time per chat completion")
    parser.add_argument("--progress", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument("--keep-log", action="store_true", help="keep the server's log even when every check passed")
    parser.add_argument("--no-disruptions", dest="disrupt", action="store_false",
                        help="neither kill a worker nor cut the database mid-run (bench/soak_disruptions.py)")
    parser.add_argument("--cut-seconds", type=float, default=3.0, help="how long the database is cut (PostgreSQL)")
    parser.add_argument("--lease-seconds", type=float, default=6.0, help="the server's CHAT_TURN_LEASE_SECONDS")
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
