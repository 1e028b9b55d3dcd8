"""What every log line carries: the id of the request it was written for (a context variable set
by llmserver.http.request_id.RequestIdMiddleware, "-" outside a request), and the JSON format
(LOG_FORMAT=json) for log collectors.

Kept apart from the middleware: Django configures logging before the apps are loaded, so this
module must not import anything that needs them."""

import json
import logging
import re
from contextvars import ContextVar
from datetime import datetime, timezone

NO_REQUEST = "-"
current_request_id: ContextVar[str] = ContextVar("request_id", default=NO_REQUEST)


class RequestIdFilter(logging.Filter):
    """Gives every log record a `request_id` ("-" outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get()
        return True


# Control characters (C0 and C1: U+0085 is a line break to Python's splitlines), and the line and
# paragraph separators some log readers also break lines on.
_LINE_FORGING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(character: re.Match[str]) -> str:
    code = ord(character[0])
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(character[0])
    return named or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")


class TextFormatter(logging.Formatter):
    """The original design's text format, one record a line: a value that came with a request (a
    model name holding a newline, say) cannot start a line of its own and pass for another
    record. Control characters in the message are escaped (\\n, \\x1b); a traceback, which is
    the server's own, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _LINE_FORGING.sub(_escaped, record.message)
        return super().formatMessage(record)


class SecurityWithoutTraceback(logging.Filter):
    """Drops the traceback of Django's security records (`django.security.*`), keeping their line:
    Django logs every request it refuses as suspicious (a Host not allowed, a path out of the
    static directory) with the traceback of the refusal, a client's doing, not a fault of the
    server's, and a line each is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("django.security"):
            record.exc_info = None
            record.exc_text = None
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
