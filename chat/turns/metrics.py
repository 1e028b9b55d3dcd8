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


# The model names a process labels series with; past these, "other". Model names come from
# clients and upstream (a dated snapshot, a local server's own name): unbounded, they would make
# a series each, for ever.
MAX_MODEL_LABELS = 100
OTHER_MODELS = "other"
_model_labels: set[str] = set()


def model_label(model: str) -> str:
    if model in _model_labels:
        return model
    if len(_model_labels) < MAX_MODEL_LABELS:
        _model_labels.add(model)
        return model
    return OTHER_MODELS


def record_tokens(*, model: str, prompt_tokens: int, completion_tokens: int) -> None:
    label = model_label(model)
    tokens_used.labels(model=label, kind="prompt").inc(prompt_tokens)
    tokens_used.labels(model=label, kind="completion").inc(completion_tokens)
