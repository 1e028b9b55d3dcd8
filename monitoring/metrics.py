"""Prometheus metrics, correct with several worker processes.

With one process (tests, WEB_CONCURRENCY=1) the metrics live in the process and `/metrics`
reads them from the default registry. With several, `manage.py serve` points
PROMETHEUS_MULTIPROC_DIR at an empty directory before the workers start; prometheus_client then
keeps every worker's values in files there, and `/metrics` adds them up, so that whichever
worker answers the scrape reports the whole server.
"""

import os
import time

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client import REGISTRY as PROCESS_REGISTRY

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

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
    if os.environ.get(MULTIPROCESS_DIR_VARIABLE):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(PROCESS_REGISTRY)


def record_tokens(*, model: str, prompt_tokens: int, completion_tokens: int) -> None:
    tokens_used.labels(model=model, kind="prompt").inc(prompt_tokens)
    tokens_used.labels(model=model, kind="completion").inc(completion_tokens)


class RequestMetricsMiddleware:
    """Counts and times every request by its route pattern (never its raw path, which would make
    a series per session id)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):  # type: ignore[no-untyped-def]
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):  # type: ignore[no-untyped-def]
        if self._async:
            return self._acall(request)
        started = time.perf_counter()
        response = self.get_response(request)
        self._observe(request, response, started)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response = await self.get_response(request)
        self._observe(request, response, started)
        return response

    @staticmethod
    def _observe(request: HttpRequest, response: HttpResponseBase, started: float) -> None:
        match = getattr(request, "resolver_match", None)
        route = "/" + match.route if match is not None and match.route else "unmatched"
        method = request.method or ""
        http_requests.labels(method=method, route=route, status=str(response.status_code)).inc()
        http_request_duration.labels(method=method, route=route).observe(time.perf_counter() - started)
