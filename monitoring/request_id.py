"""Request ids: every request has one, taken from `X-Request-Id` when the caller (or a proxy in
front) sends a sensible one, made up otherwise. It is returned in the response header, put in
every log line written while the request runs (in the event loop and in its worker threads:
asgiref copies context variables into them), and sent upstream with the model call, so that one
id follows a chat from the client through our logs to the model provider's."""

import logging
import re
import uuid
from contextvars import ContextVar

from django.http import HttpRequest, HttpResponseBase

REQUEST_ID_HEADER = "X-Request-Id"
# What we accept from outside: short, and nothing that could forge a log line or a header.
_ACCEPTED = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
NO_REQUEST = "-"

current_request_id: ContextVar[str] = ContextVar("request_id", default=NO_REQUEST)


def request_id_from(header_value: str | None) -> str:
    if header_value and _ACCEPTED.match(header_value):
        return header_value
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Outermost middleware: sets the id before anything logs, and returns it on every response."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):  # type: ignore[no-untyped-def]
        self.get_response = get_response
        from asgiref.sync import iscoroutinefunction, markcoroutinefunction

        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):  # type: ignore[no-untyped-def]
        if self._async:
            return self._acall(request)
        token = current_request_id.set(request_id_from(request.headers.get(REQUEST_ID_HEADER)))
        try:
            response = self.get_response(request)
            response[REQUEST_ID_HEADER] = current_request_id.get()
            return response
        finally:
            current_request_id.reset(token)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        # Each request is its own task, with its own copy of the context: no reset needed, and
        # a streamed response's body, written after this returns, still logs under the id.
        current_request_id.set(request_id_from(request.headers.get(REQUEST_ID_HEADER)))
        response = await self.get_response(request)
        response[REQUEST_ID_HEADER] = current_request_id.get()
        return response


class RequestIdFilter(logging.Filter):
    """Gives every log record a `request_id` ("-" outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get()
        return True
