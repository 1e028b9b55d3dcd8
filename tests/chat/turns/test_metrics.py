"""The turn's Prometheus metrics: bounded, whatever names clients and upstreams use."""

from chat.turns import metrics


def test_model_labels_stop_growing_at_their_bound(monkeypatch) -> None:
    monkeypatch.setattr(metrics, "_model_labels", set())

    labels = [metrics.model_label(f"model-{n}") for n in range(metrics.MAX_MODEL_LABELS + 5)]

    assert labels[: metrics.MAX_MODEL_LABELS] == [f"model-{n}" for n in range(metrics.MAX_MODEL_LABELS)]
    assert labels[metrics.MAX_MODEL_LABELS:] == [metrics.OTHER_MODELS] * 5
    assert metrics.model_label("model-0") == "model-0"  # a known name keeps its series
