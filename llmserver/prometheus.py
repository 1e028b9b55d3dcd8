"""Prometheus metrics correct with several worker processes: where every process keeps them.

With one process (tests, WEB_CONCURRENCY=1) the metrics live in the process. With several,
`manage.py serve` points PROMETHEUS_MULTIPROC_DIR at an empty directory before the workers start;
prometheus_client then keeps every worker's values in files there, and the exposition
(monitoring/metrics.py) adds them up, so that whichever worker answers the scrape reports the
whole server. Apps define their own metrics with prometheus_client; this module only knows where
the files are (settings.py creates a directory the operator names, before any metric exists).
"""

import os
from pathlib import Path

import psutil

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_directory() -> Path | None:
    directory = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
    return Path(directory) if directory else None


def ended_process_ids() -> set[int]:
    """Processes that left metrics files (`<kind>_<pid>.db`) and are no longer running."""
    directory = multiprocess_directory()
    if directory is None:
        return set()
    suffixes = (path.stem.rsplit("_", 1)[1] for path in directory.glob("*_*.db"))
    pids = {int(suffix) for suffix in suffixes if suffix.isdigit()}
    return {pid for pid in pids if not psutil.pid_exists(pid)}


def remove_files_of_ended_processes() -> None:
    """At start-up: a previous run's files would be added to this run's counts."""
    directory = multiprocess_directory()
    for pid in ended_process_ids():
        for path in directory.glob(f"*_{pid}.db"):  # type: ignore[union-attr]
            path.unlink(missing_ok=True)
