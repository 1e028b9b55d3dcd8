"""Benchmark: usage reports over a large usage table.

Fills N usage records (default 1,000,000) over 90 days for 1,000 keys and 4 models, with the
daily roll-ups they imply (per key, and for all keys), into a fresh database, then times the usage report (the selector
behind GET /api/v1/usage) for one key and for all keys, grouped by day, model and key, and
prints the median of several runs.

    .venv/bin/python -m bench.usage_report --database sqlite            # a temporary SQLite file
    .venv/bin/python -m bench.usage_report --database postgres          # a temporary PostgreSQL database
    .venv/bin/python -m bench.usage_report --records 100000 --runs 9

The rows are written with bulk inserts, not through usage_record(): a million calls of the
service would take the benchmark's time without changing what the report reads (the service's
roll-up is tested for exactness in tests/chat/usage/test_usage.py and tests/e2e/test_served.py).
"""

import argparse
import os
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal
from pathlib import Path

from tests.support.processes import POSTGRES_ADMIN_URL, fresh_postgres_database

MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "llama3.1:8b"]
DAYS = 90
KEYS = 1000
BATCH = 20_000


def configure(database: str, workdir: Path) -> Callable[[], None]:
    """Point Django at a fresh database (SQLite in `workdir`); return what drops it."""
    if database == "sqlite":
        os.environ["DATABASE_URL"] = f"sqlite:///{workdir / 'bench.sqlite3'}"
        return lambda: None
    url, drop_database = fresh_postgres_database(POSTGRES_ADMIN_URL, f"llmserver_bench_{os.getpid()}")
    os.environ["DATABASE_URL"] = url

    def drop() -> None:
        from django.db import connections

        connections.close_all()
        drop_database()

    return drop


def fill(records: int) -> float:
    from chat.models import ApiKey, UsageDaily, UsageDailyTotal, UsageRecord
    from chat.usage.pricing import usage_cost

    started = time.perf_counter()
    keys = ApiKey.objects.bulk_create(
        ApiKey(name=f"bench-{n}", key_id=f"bench{n:07d}", secret_hash="0" * 64, last4="0000") for n in range(KEYS)
    )
    key_ids = [key.pk for key in keys]
    now = datetime.now(dt_timezone.utc)
    rng = random.Random(42)
    prices = {model: usage_cost(model=model, prompt_tokens=1_000_000, completion_tokens=0) for model in MODELS}
    out_prices = {model: usage_cost(model=model, prompt_tokens=0, completion_tokens=1_000_000) for model in MODELS}
    daily: dict[tuple[int, str, object], list] = defaultdict(lambda: [0, 0, 0, Decimal(0)])
    batch: list[UsageRecord] = []
    for _ in range(records):
        key_id, model = rng.choice(key_ids), rng.choice(MODELS)
        created_at = now - timedelta(seconds=rng.randrange(DAYS * 86400))
        prompt, completion = rng.randrange(10, 2000), rng.randrange(1, 800)
        cost = ((prompt * prices[model] + completion * out_prices[model]) / 1_000_000).quantize(Decimal("0.00000001"))
        batch.append(UsageRecord(
            api_key_id=key_id, model=model, prompt_tokens=prompt, completion_tokens=completion,
            total_tokens=prompt + completion, cost=cost, latency_ms=rng.randrange(50, 3000), outcome="success",
            created_at=created_at,
        ))
        row = daily[(key_id, model, created_at.date())]
        row[0] += 1
        row[1] += prompt
        row[2] += completion
        row[3] += cost
        if len(batch) == BATCH:
            UsageRecord.objects.bulk_create(batch)
            batch.clear()
    UsageRecord.objects.bulk_create(batch)
    UsageDaily.objects.bulk_create(
        (UsageDaily(api_key_id=key_id, model=model, day=day, requests=n, prompt_tokens=p, completion_tokens=c,
                    total_tokens=p + c, cost=cost)
         for (key_id, model, day), (n, p, c, cost) in daily.items()),
        batch_size=BATCH,
    )
    totals: dict[tuple[str, object], list] = defaultdict(lambda: [0, 0, 0, Decimal(0)])
    for (_key_id, model, day), counts in daily.items():
        total = totals[(model, day)]
        for index, value in enumerate(counts):
            total[index] += value
    UsageDailyTotal.objects.bulk_create(
        UsageDailyTotal(model=model, day=day, requests=n, prompt_tokens=p, completion_tokens=c, total_tokens=p + c,
                        cost=cost)
        for (model, day), (n, p, c, cost) in totals.items()
    )
    return time.perf_counter() - started


def timed(runs: int, function) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmserver.settings")
    os.environ["LOG_FILE"] = ""
    workdir = tempfile.TemporaryDirectory(prefix="llmserver-usage-report-")
    drop = configure(args.database, Path(workdir.name))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from chat.models import ApiKey, UsageDaily
    from chat.usage import selectors

    try:
        call_command("migrate", verbosity=0)
        seconds = fill(args.records)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
        print(f"{connection.vendor}: {args.records:,} usage records, {UsageDaily.objects.count():,} daily roll-ups, "
              f"{KEYS} keys, {DAYS} days; filled in {seconds:.0f} s")
        day_to = datetime.now(dt_timezone.utc).date()
        day_from = day_to - timedelta(days=DAYS - 1)
        one_key = ApiKey.objects.order_by("pk")[KEYS // 2]
        print(f"{'report':<34}{'median ms':>10}   (of {args.runs} runs)")
        for label, api_key, group_by in [
            ("one key, 90 days, by day", one_key, "day"),
            ("one key, 90 days, by model", one_key, "model"),
            ("all keys, 90 days, by day", None, "day"),
            ("all keys, 90 days, by model", None, "model"),
            ("all keys, 90 days, by key", None, "key"),
        ]:
            median = timed(args.runs, lambda api_key=api_key, group_by=group_by: selectors.usage_report(
                api_key=api_key, day_from=day_from, day_to=day_to, group_by=group_by))
            print(f"{label:<34}{median:>10.1f}")
    finally:
        drop()
        workdir.cleanup()  # with SQLite, the whole database (1,000,000 records by default)


if __name__ == "__main__":
    main()
