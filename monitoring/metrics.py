"""Prometheus metrics, correct with several worker processes.

With one process (tests, WEB_CONCURRENCY=1) the metrics live in the process and `/metrics`
reads them from the default registry. With several, `manage.py serve` points
PROMETHEUS_MULTIPROC_DIR at an empty directory before the workers start; prometheus_client then
keeps every worker's values in files there, and `/metrics` adds them up, so that whichever
worker answers the scrape reports the whole server.
"""

import os
import time
from pathlib import Path

import psutil

from django.http import HttpRequest, HttpResponseBase
from django.utils.deprecation import MiddlewareMixin
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client import REGISTRY as PROCESS_REGISTRY

from llmserver.middleware import InEventLoop

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def _multiprocess_directory() -> Path | None:
    directory = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
    return Path(directory) if directory else None


# prometheus_client opens its files there as each metric below is created (at start-up, before
# any command runs), so a directory the operator names must exist by then.
if (_directory := _multiprocess_directory()) is not None:
    _directory.mkdir(parents=True, exist_ok=True)


def _ended_process_ids() -> set[int]:
    """Processes that left metrics files (`<kind>_<pid>.db`) and are no longer running."""
    directory = _multiprocess_directory()
    if directory is None:
        return set()
    pids = {int(path.stem.rsplit("_", 1)[1]) for path in directory.glob("*_*.db") if path.stem.rsplit("_", 1)[1].isdigit()}
    return {pid for pid in pids if not psutil.pid_exists(pid)}


def remove_files_of_ended_processes() -> None:
    """At start-up: a previous run's files would be added to this run's counts."""
    directory = _multiprocess_directory()
    for pid in _ended_process_ids():
        for path in directory.glob(f"*_{pid}.db"):  # type: ignore[union-attr]
            path.unlink(missing_ok=True)

http_requests = Counter(
    "llmserver_http_requests_total", "HTTP requests answered, by route and status.", ["method", "route", "status"]
)
http_request_duration = Histogram(
    "llmserver_http_request_duration_seconds",
    "Time to the response's headers (for a stream: to its first event), by route.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
upstream_duration = Histogram(
    "llmserver_upstream_request_duration_seconds",
    "Upstream model calls, whole (a stream: to its last piece), by provider and outcome.",
    ["provider", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
upstream_errors = Counter(
    "llmserver_upstream_errors_total", "Upstream model calls that failed or were cut short, by error code.",
    ["provider", "error_code"],
)
tokens_used = Counter("llmserver_tokens_total", "Tokens recorded, by model and kind.", ["model", "kind"])
active_streams = Gauge(
    "llmserver_active_streams", "Streamed answers being written right now.", multiprocess_mode="livesum"
)


def exposition() -> bytes:
    """Every metric of the server, in Prometheus' text format."""
    if _multiprocess_directory() is not None:
        # A worker that died (uvicorn replaces it) must not keep counting in the live gauges;
        # its counters stay in the sums.
        for pid in _ended_process_ids():
            multiprocess.mark_process_dead(pid)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(PROCESS_REGISTRY)


def record_tokens(*, model: str, prompt_tokens: int, completion_tokens: int) -> None:
    tokens_used.labels(model=model, kind="prompt").inc(prompt_tokens)
    tokens_used.labels(model=model, kind="completion").inc(completion_tokens)


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetricsMiddleware(InEventLoop, MiddlewareMixin):
    """Counts and times every request by its route pattern (never its raw path, which would make
    a series per session id)."""

    def process_request(self, request: HttpRequest) -> None:
        request.metrics_started = time.perf_counter()  # type: ignore[attr-defined]

    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        match = getattr(request, "resolver_match", None)
        route = "/" + match.route if match is not None and match.route else "unmatched"
        # Any other method is "other": a client's made-up methods must not each make a series.
        method = request.method if request.method in KNOWN_METHODS else "other"
        http_requests.labels(method=method, route=route, status=str(response.status_code)).inc()
        http_request_duration.labels(method=method, route=route).observe(time.perf_counter() - request.metrics_started)  # type: ignore[attr-defined]
        return response
