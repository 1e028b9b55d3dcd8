"""What every log line carries: the id of the request it was written for (a context variable set
by llmserver.http.request_id.RequestIdMiddleware, "-" outside a request), and the JSON format
(LOG_FORMAT=json) for log collectors.

Kept apart from the middleware: Django configures logging before the apps are loaded, so this
module must not import anything that needs them."""

import json
import logging
from contextvars import ContextVar
from datetime import datetime, timezone

NO_REQUEST = "-"
current_request_id: ContextVar[str] = ContextVar("request_id", default=NO_REQUEST)


class RequestIdFilter(logging.Filter):
    """Gives every log record a `request_id` ("-" outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", NO_REQUEST),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
