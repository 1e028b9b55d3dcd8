"""`manage.py serve`: the production server (uvicorn, ASGI), as `make run` and the image run it."""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from llmserver import prometheus


@contextlib.contextmanager
def _metrics_directory(workers: int) -> Iterator[None]:
    """Several workers keep their metrics in files under PROMETHEUS_MULTIPROC_DIR (llmserver/
    prometheus.py): without one named, a fresh directory, set before the workers start and removed
    when the server stops. A named one loses the files of processes that have ended (a previous
    run's), which would be added to this run's counts."""
    if prometheus.MULTIPROCESS_DIR_VARIABLE in os.environ:
        prometheus.remove_files_of_ended_processes()
    elif workers > 1:
        with tempfile.TemporaryDirectory(prefix="llmserver-metrics-") as directory:
            os.environ[prometheus.MULTIPROCESS_DIR_VARIABLE] = directory
            yield
        return
    yield


class Command(BaseCommand):
    help = "Serve the API through uvicorn on SERVER_HOST:SERVER_PORT with WEB_CONCURRENCY workers."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=None, help="Overrides SERVER_HOST.")
        parser.add_argument("--port", type=int, default=None, help="Overrides SERVER_PORT.")
        parser.add_argument("--workers", type=int, default=None, help="Overrides WEB_CONCURRENCY.")

    def handle(self, *args: Any, **options: Any) -> None:
        host = options["host"] or settings.SERVER_HOST
        port = options["port"] or settings.SERVER_PORT
        workers = options["workers"] or settings.WEB_CONCURRENCY
        with _metrics_directory(workers):
            self._serve(host=host, port=port, workers=workers)

    def _serve(self, *, host: str, port: int, workers: int) -> None:
        self.stdout.write(f"Serving LLM Server on http://{host}:{port} with {workers} worker(s)")
        uvicorn.run(
            "llmserver.asgi:application",
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            http="httptools",
            # Django's LOGGING (our format, logs/app.log) already handles uvicorn's loggers.
            log_config=None,
            access_log=settings.ACCESS_LOG,
            # The sweep of interrupted turns, and writing the ends of the turns a shutdown cut
            # short (llmserver/asgi.py).
            lifespan="on",
            # Behind a reverse proxy, trust its X-Forwarded-* headers only from the given addresses.
            proxy_headers=True,
            forwarded_allow_ips=settings.FORWARDED_ALLOW_IPS,
            timeout_graceful_shutdown=settings.GRACEFUL_SHUTDOWN_SECONDS,
        )
