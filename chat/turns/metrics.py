"""The turn's own Prometheus metrics: its upstream calls, their tokens and the streams open now.

Defined here, with prometheus_client, rather than in the monitoring app, which sits above chat and
only exposes what every worker process recorded (monitoring/metrics.py): chat never imports it.
"""

from prometheus_client import Counter, Gauge, Histogram

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


def record_tokens(*, model: str, prompt_tokens: int, completion_tokens: int) -> None:
    tokens_used.labels(model=model, kind="prompt").inc(prompt_tokens)
    tokens_used.labels(model=model, kind="completion").inc(completion_tokens)
