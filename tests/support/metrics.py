"""Reading Prometheus' text format in tests."""

from prometheus_client.parser import text_string_to_metric_families


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples `name` with these labels (others may differ) in Prometheus' text
    format: 0 when the metric has none yet, and an AssertionError when the text does not hold
    the metric at all (an error page, a renamed metric), which a 0 would hide."""
    samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name]
    assert samples or f"# TYPE {name.removesuffix('_total').removesuffix('_count')} " in text, (
        f"{name} is not in the exposition"
    )
    return sum(sample.value for sample in samples
               if all(sample.labels.get(key) == wanted for key, wanted in labels.items()))
