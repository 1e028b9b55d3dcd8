"""Benchmark: what the server adds to each chat, how many it serves, and how many it holds at once.

Starts, as separate processes (bench/harness.py): the fake OpenAI-compatible upstream
(tests/support/fake_upstream.py), the
server in its production configuration (DJANGO_ENV=production, `manage.py serve`: uvicorn, the
same command as `make run` and the Docker image) on PostgreSQL and Redis when they run here (else
SQLite), with full persistence (session, history, messages and usage written every turn); and,
in this process, a load generator on raw asyncio sockets (a few microseconds per request, so that
it takes as little as possible of the two cores from the server).

Prints, each measured side by side in one run:
1. added latency, one client at a time: the server's p50/p99 minus the fake upstream's when
   called directly with the same kind of request;
2. requests per second at 8 and 32 concurrent clients (and the upstream called directly), with
   the server's CPU time per chat and how busy it kept its processes; and the same for
   /v1/chat/completions without a session (LiteLLM's kind of call: nothing kept but usage);
3. added time to first token of a stream (first `delta` event vs the upstream's first chunk);
4. 1,000 concurrent streaming chats against an upstream that takes 5 s: completed, errors, peak
   memory of the server's processes;
5. per-turn cost as history grows: a turn in a session with 10,000 stored messages against one
   with 10 (same prompt size: the history that fits the window is the same).

    .venv/bin/python -m bench.chat_throughput                   # what `make bench` runs
    .venv/bin/python -m bench.chat_throughput --database sqlite --workers 2 --streams 500
"""

import argparse
import os
import resource
import secrets
import subprocess
import tempfile
from pathlib import Path

import psutil
import uvloop

from bench.harness import (
    MODEL,
    TURNS_PER_SESSION,
    USER_MESSAGE,
    MemoryWatch,
    Result,
    Target,
    argument_parser,
    cpu_seconds,
    database_url,
    line,
    manage,
    run_load,
    server_env,
    start_fake_upstream,
    start_server,
)
from tests.support.processes import free_port, stop, wait_until_healthy

# A model no table knows: the server gives it LLM_DEFAULT_CONTEXT_WINDOW (8,192 tokens), which
# about 11 of the seeded history messages fill.
HISTORY_MODEL = "bench-history-model"
HISTORY_MESSAGE = ("The quick brown fox jumps over the lazy dog while the bench counts tokens. " * 40).strip()


LITELLM_MASTER_KEY = "sk-litellm-bench-" + secrets.token_hex(16)


def start_litellm(executable: str, upstream_url: str, workdir: Path) -> tuple[subprocess.Popen, int]:
    """LiteLLM's proxy as its issue measured it: one worker, no database, the same fast upstream.
    Its model cost map is read from the package (no download at start-up)."""
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: " + MODEL + "\n    litellm_params:\n      model: openai/" + MODEL
        + "\n      api_base: " + upstream_url + "\n      api_key: sk-bench\n"
        + "litellm_settings:\n  telemetry: false\n"
    )
    port = free_port()
    env = {**os.environ, "LITELLM_MASTER_KEY": LITELLM_MASTER_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    process = subprocess.Popen(
        [executable, "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_healthy(process, f"http://127.0.0.1:{port}", timeout_seconds=60, path="/health/liveliness")
    except RuntimeError as exc:
        raise SystemExit(f"LiteLLM's proxy did not start: {exc}") from None
    return process, port


SEED_HISTORY = """
from chat.models import ApiKey, ChatSession, Message
from chat import tokens
key = ApiKey.objects.get(key_id={key_id!r})
count = tokens.count_message_tokens(role="user", content={content!r}, model={model!r})
encoding = tokens.encoding_name_for_model({model!r})
for public_id, size in (("history-10", 10), ("history-10000", 10000)):
    session = ChatSession.objects.create(api_key=key, public_id=public_id, model={model!r})
    Message.objects.bulk_create(
        (Message(session=session, role=("user", "assistant")[n % 2], content={content!r}, model={model!r},
                 status="complete", token_count=count, token_encoding=encoding) for n in range(size)),
        batch_size=2000,
    )
print(count)
"""


# --- The benchmark ------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, workdir: Path) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    fast_upstream, fast_url, fast_port = start_fake_upstream(0)
    slow_upstream, slow_url, _ = start_fake_upstream(args.stream_latency * 1000)
    url, database, drop_database = database_url(args.database, workdir)
    env, cache = server_env(database_url=url, database=database, upstream_url=fast_url, workers=args.workers,
                            workdir=workdir)
    servers: list[subprocess.Popen] = []
    try:
        manage(env, "migrate", "--noinput")
        api_key = manage(env, "create_api_key", "--name", "bench").strip().splitlines()[-1]
        key_id = api_key.split("_")[1]
        port = free_port()
        server = start_server(env, port)
        servers.append(server)
        auth = {"Authorization": f"Bearer {api_key}"}
        print(f"LLM Server benchmark: {psutil.cpu_count()} CPUs, {database}, cache {cache}, "
              f"{args.workers} worker(s), DJANGO_ENV=production, uvicorn; load generator on raw asyncio sockets")

        run_id = secrets.token_hex(3)

        def server_chat(stream: bool = False) -> Target:
            return Target("127.0.0.1", port, "/api/v1/chat", auth, lambda c, n: {
                "session_id": f"{run_id}-{c}-{n // TURNS_PER_SESSION}-{stream:d}", "user_message": USER_MESSAGE,
                "max_tokens": 200, "stream": stream,
            })

        def server_openai() -> Target:
            body = {"model": MODEL, "messages": [{"role": "user", "content": USER_MESSAGE}], "max_tokens": 200}
            return Target("127.0.0.1", port, "/v1/chat/completions", auth, lambda c, n: body)

        def direct(stream: bool = False) -> Target:
            body = {"model": MODEL, "messages": [{"role": "user", "content": USER_MESSAGE}], "max_tokens": 200}
            if stream:
                body |= {"stream": True, "stream_options": {"include_usage": True}}
            return Target("127.0.0.1", fast_port, "/v1/chat/completions", {"Authorization": "Bearer sk-bench"},
                          lambda c, n: body)

        # Warm both up (connections, pools, code paths).
        await run_load(server_chat(), clients=8, requests=200)
        await run_load(server_openai(), clients=8, requests=200)
        await run_load(direct(), clients=8, requests=200)

        print("\n1. Added latency, one client at a time "
              f"({args.requests} chats; each session 10 turns, so history is read and written)")
        upstream_alone = await run_load(direct(), clients=1, requests=args.requests)
        through = await run_load(server_chat(), clients=1, requests=args.requests)
        line("upstream called directly p50 / p99", f"{upstream_alone.p(50):.2f} / {upstream_alone.p(99):.2f} ms")
        line("through the server p50 / p99", f"{through.p(50):.2f} / {through.p(99):.2f} ms")
        line("added latency p50 / p99 (target p50 <= 3 ms)",
             f"{through.p(50) - upstream_alone.p(50):.2f} / {through.p(99) - upstream_alone.p(99):.2f} ms")
        line("errors", str(through.errors + upstream_alone.errors))
        # The floor under every figure here: Django's request path alone, with no database,
        # no upstream and no key (GET /api/v1/system/health).
        bare = Target("127.0.0.1", port, "/api/v1/system/health", {}, lambda c, n: None)
        await run_load(bare, clients=1, requests=200)
        bare_one = await run_load(bare, clients=1, requests=args.requests)
        bare_many = await run_load(bare, clients=8, seconds=min(args.seconds, 5))
        line("for scale, a bare request (health): p50; req/s at 8 clients",
             f"{bare_one.p(50):.2f} ms; {bare_many.rps:.0f} req/s")

        litellm = None
        if args.litellm:
            litellm_process, litellm_port = start_litellm(args.litellm, fast_url, workdir)
            servers.append(litellm_process)
            litellm = Target(
                "127.0.0.1", litellm_port, "/v1/chat/completions", {"Authorization": f"Bearer {LITELLM_MASTER_KEY}"},
                lambda c, n: {
                    "model": MODEL, "messages": [{"role": "user", "content": USER_MESSAGE}], "max_tokens": 200,
                },
            )
            await run_load(litellm, clients=8, requests=200)
            litellm_one = await run_load(litellm, clients=1, requests=args.requests // 2)
            line("LiteLLM proxy (1 worker, no database), same load: p50 / p99",
                 f"{litellm_one.p(50):.2f} / {litellm_one.p(99):.2f} ms, {litellm_one.errors} errors")

        print(f"\n2. Throughput, {args.seconds:.0f} s per level "
              "(target >= 5x LiteLLM's; its issue measured 56-72 req/s)")
        for clients in (8, 32):
            cpu_before = cpu_seconds(server.pid)
            with MemoryWatch(server.pid) as memory:
                loaded = await run_load(server_chat(), clients=clients, seconds=args.seconds)
            server_cpu = cpu_seconds(server.pid) - cpu_before
            alone = await run_load(direct(), clients=clients, seconds=min(args.seconds, 5))
            line(f"{clients} clients: server req/s (upstream alone)", f"{loaded.rps:.0f} ({alone.rps:.0f})")
            line(f"{clients} clients: p50 / p99, errors, peak server memory",
                 f"{loaded.p(50):.1f} / {loaded.p(99):.1f} ms, {loaded.errors} errors, {memory.peak / 2**20:.0f} MiB")
            # What bounds the figure above: a worker busy all the time is at 100% of a core.
            line(f"{clients} clients: server CPU per chat; busy (100% = one core)",
                 f"{server_cpu / max(loaded.count, 1) * 1000:.1f} ms; {server_cpu / loaded.elapsed * 100:.0f}%")
            for sample in loaded.error_samples:
                line("  error sample", sample[:200])
            # LiteLLM's own kind of call: OpenAI's wire format, no conversation kept (only the
            # usage record is written).
            cpu_before = cpu_seconds(server.pid)
            stateless = await run_load(server_openai(), clients=clients, seconds=args.seconds)
            stateless_cpu = cpu_seconds(server.pid) - cpu_before
            line(f"{clients} clients: /v1/chat/completions, no session: req/s; CPU per chat",
                 f"{stateless.rps:.0f}, {stateless.errors} errors; "
                 f"{stateless_cpu / max(stateless.count, 1) * 1000:.1f} ms")
            if litellm is not None:
                theirs = await run_load(litellm, clients=clients, seconds=args.seconds)
                line(f"{clients} clients: LiteLLM req/s, p50; ratio server / LiteLLM",
                     f"{theirs.rps:.0f}, {theirs.p(50):.1f} ms, {theirs.errors} errors; "
                     f"{loaded.rps / max(theirs.rps, 1e-9):.2f}x")
                line(f"{clients} clients: ratio /v1 without a session / LiteLLM",
                     f"{stateless.rps / max(theirs.rps, 1e-9):.2f}x")

        print(f"\n3. Streams, one client at a time ({args.requests // 2} streamed chats)")
        stream_alone = await run_load(direct(stream=True), clients=1, requests=args.requests // 2)
        stream_through = await run_load(server_chat(stream=True), clients=1, requests=args.requests // 2)
        line("time to first token, upstream directly p50 / p99",
             f"{stream_alone.p(50, stream_alone.first_data):.2f} / "
             f"{stream_alone.p(99, stream_alone.first_data):.2f} ms")
        line("time to first token, through the server p50 / p99",
             f"{stream_through.p(50, stream_through.first_data):.2f} / "
             f"{stream_through.p(99, stream_through.first_data):.2f} ms")
        line("added time to first token p50",
             f"{stream_through.p(50, stream_through.first_data) - stream_alone.p(50, stream_alone.first_data):.2f} ms")
        line("errors", str(stream_through.errors))

        print(f"\n4. {args.streams} concurrent streaming chats, upstream answering after {args.stream_latency:.0f} s")
        slow_port = free_port()
        slow_server = start_server({**env, "OPENAI_BASE_URL": slow_url}, slow_port)
        servers.append(slow_server)
        slow_target = server_chat(stream=True)
        slow_target.port = slow_port
        with MemoryWatch(slow_server.pid) as memory:
            many = await run_load(slow_target, clients=args.streams, requests=args.streams)
        line("completed / errors", f"{many.count} / {many.errors}")
        line("answers by status (503: server_busy, with Retry-After)",
             ", ".join(f"{count} x {status}" for status, count in many.statuses.most_common()))
        line("wall time; slowest stream", f"{many.elapsed:.2f} s; {many.p(100) / 1000:.2f} s")
        line("peak memory of the server's processes (target < 1 GiB)", f"{memory.peak / 2**20:.0f} MiB")
        for sample in many.error_samples:
            line("  error sample", sample[:200])

        print("\n5. Per-turn cost as history grows (10 vs 10,000 stored messages, same prompt size)")
        per_message = manage(env, "shell", "--no-imports", "-c", SEED_HISTORY.format(
            key_id=key_id, content=HISTORY_MESSAGE, model=HISTORY_MODEL)).strip().splitlines()[-1]

        def history_target(session: str) -> Target:
            return Target("127.0.0.1", port, "/api/v1/chat", auth, lambda c, n: {
                "session_id": session, "user_message": USER_MESSAGE, "max_tokens": 1000,
            })
        short_runs, long_runs = [], []
        for _ in range(args.history_rounds):
            short_runs.append(await run_load(history_target("history-10"), clients=1, requests=20))
            long_runs.append(await run_load(history_target("history-10000"), clients=1, requests=20))
        short = Result(latencies=[x for r in short_runs for x in r.latencies], errors=sum(r.errors for r in short_runs))
        long = Result(latencies=[x for r in long_runs for x in r.latencies], errors=sum(r.errors for r in long_runs))
        line("stored message size", f"{per_message} tokens ({len(HISTORY_MESSAGE)} characters)")
        line("turn p50 with 10 stored messages", f"{short.p(50):.2f} ms")
        line("turn p50 with 10,000 stored messages", f"{long.p(50):.2f} ms")
        line("ratio (target <= 1.2)", f"{long.p(50) / short.p(50):.2f}")
        line("errors", str(short.errors + long.errors))
    finally:
        stop(*servers, fast_upstream, slow_upstream)
        drop_database()


def main() -> None:
    parser = argument_parser(__doc__.split("\n\n")[0], workers=1)
    parser.add_argument("--requests", type=int, default=1000, help="requests for the one-client measurements")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each throughput level")
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams in part 4")
    parser.add_argument("--stream-latency", type=float, default=5.0, help="upstream seconds in part 4")
    parser.add_argument("--history-rounds", type=int, default=10, help="alternating rounds of 20 turns in part 5")
    parser.add_argument("--litellm", metavar="EXECUTABLE", default="",
                        help="also measure LiteLLM's proxy side by side: the path of its `litellm` command, "
                             "installed apart from the project (docs/operations.md, 'Benchmarks')")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmserver-bench-") as workdir:
        uvloop.run(bench(args, Path(workdir)))


if __name__ == "__main__":
    main()
