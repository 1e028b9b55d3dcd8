"""The server's HTTP metrics, and `/metrics`' exposition of every metric every worker process
recorded (the chat turn's own metrics are chat/turns/metrics.py; where several processes keep
theirs is llmserver/prometheus.py)."""

import time

from django.http import HttpRequest, HttpResponseBase
from django.utils.deprecation import MiddlewareMixin
from prometheus_client import REGISTRY as PROCESS_REGISTRY
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

from llmserver.http.middleware import InEventLoop
from llmserver.prometheus import ended_process_ids, multiprocess_directory

http_requests = Counter(
    "llmserver_http_requests_total", "HTTP requests answered, by route and status.", ["method", "route", "status"]
)
http_request_duration = Histogram(
    "llmserver_http_request_duration_seconds",
    "Time to the response's headers (for a stream: to its first event), by route.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


def exposition() -> bytes:
    """Every metric of the server, in Prometheus' text format."""
    if multiprocess_directory() is not None:
        # A worker that died (uvicorn replaces it) must not keep counting in the live gauges;
        # its counters stay in the sums.
        for pid in ended_process_ids():
            multiprocess.mark_process_dead(pid)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(PROCESS_REGISTRY)


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
