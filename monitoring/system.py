"""What the monitoring endpoints report: plain functions, blocking (psutil, the database, the
cache), so that the views run them in a worker thread and never stall the event loop."""

import functools
import os
import platform
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import django
import psutil
from django.conf import settings
from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from django.db.models import Count, Q, Sum
from django.utils import timezone

from chat.models import ApiKey, ChatSession, Message, UsageDailyTotal
from chat.providers import default_model, upstream_configured

APP_VERSION = settings.SPECTACULAR_SETTINGS["VERSION"]
_PROCESS = psutil.Process()


def _timed(check) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Run `check`; report whether it worked and how long it took, with the error's kind if not."""
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # noqa: BLE001 - reported, not raised: this is a health report
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        return {"ok": False, "error": type(exc).__name__, "latency_ms": latency_ms}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


def _database_check() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _cache_check() -> None:
    key = f"llmserver:ready:{uuid.uuid4().hex}"
    cache.set(key, "1", timeout=10)
    if cache.get(key) != "1":
        raise RuntimeError("the cache did not keep a value")
    cache.delete(key)


@functools.cache
def _known_migrations() -> frozenset[tuple[str, str]]:
    """Every migration the code has, as (app, name): read from the migration files once, since the
    code does not change under a running process (the database may)."""
    return frozenset(MigrationLoader(None, ignore_no_migrations=True).graph.nodes)


def pending_migrations() -> list[str]:
    """Migrations not applied to the database, as "app.name": asked of the database every time
    (one query), so that a database emptied or replaced under a running server is seen."""
    applied = MigrationRecorder(connections[DEFAULT_DB_ALIAS]).applied_migrations()
    return sorted(f"{app}.{name}" for app, name in _known_migrations() - set(applied))


def readiness() -> dict[str, Any]:
    """{"database": {...}, "cache": {...}, "migrations": {...}}, each with "ok"."""
    checks: dict[str, Any] = {"database": _timed(_database_check), "cache": _timed(_cache_check)}
    if checks["database"]["ok"]:
        try:
            pending = pending_migrations()
            checks["migrations"] = {"ok": not pending, "pending": pending}
        except Exception as exc:  # noqa: BLE001
            checks["migrations"] = {"ok": False, "error": type(exc).__name__}
    else:
        checks["migrations"] = {"ok": False, "error": "database unreachable"}
    return checks


def _counts() -> dict[str, Any]:
    today = timezone.now().date()
    keys = ApiKey.objects.aggregate(all=Count("pk"), active=Count("pk", filter=Q(revoked_at__isnull=True)))
    return {
        "api_keys": keys["all"],
        "active_api_keys": keys["active"],
        "sessions": ChatSession.objects.count(),
        "messages": Message.objects.count(),
        "tokens_today": UsageDailyTotal.objects.filter(day=today).aggregate(total=Sum("total_tokens"))["total"] or 0,
    }


def system_info(*, counts: bool = True) -> dict[str, Any]:
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(str(settings.BASE_DIR))
    with _PROCESS.oneshot():
        process = {
            "pid": _PROCESS.pid,
            "rss_bytes": _PROCESS.memory_info().rss,
            "threads": _PROCESS.num_threads(),
            # Files and sockets (database and client connections) alike; open_files() missed the
            # sockets and took 2.3 ms at 200 open files, num_fds() 0.08 ms.
            "open_fds": _PROCESS.num_fds(),
            "uptime_seconds": round(time.time() - _PROCESS.create_time(), 1),
        }
    database = _timed(_database_check)
    info: dict[str, Any] = {
        "cpu": {
            "count": psutil.cpu_count(),
            # Over a tenth of a second now: "since the previous call" (interval=None) depended on
            # who called last in this worker. (This runs in a thread, not on the event loop.)
            "percent": psutil.cpu_percent(interval=0.1),
            "load_average": [round(load, 2) for load in os.getloadavg()],
        },
        "memory": {"total_bytes": memory.total, "available_bytes": memory.available, "percent": memory.percent},
        "disk": {
            "path": str(settings.BASE_DIR), "total_bytes": disk.total, "free_bytes": disk.free, "percent": disk.percent,
        },
        "process": process,
        "versions": {"python": platform.python_version(), "django": django.get_version(), "app": APP_VERSION},
        "database": {"vendor": connection.vendor, **database},
        "cache": {"backend": settings.CACHES["default"]["BACKEND"].rsplit(".", 1)[-1], **_timed(_cache_check)},
        "upstream": {
            "provider": "openai-compatible" if upstream_configured() else "offline",
            # The host only: a base URL may carry credentials or a tenant path.
            "host": urlsplit(settings.OPENAI_BASE_URL or "https://api.openai.com/v1").hostname
            if upstream_configured() else None,
            "default_model": default_model(),
        },
        "counts": _counts() if counts and database["ok"] else None,
    }
    return info
