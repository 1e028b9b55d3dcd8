"""Request ids: every request has one, taken from `X-Request-Id` when the caller (or a proxy in
front) sends a sensible one, made up otherwise. It is returned in the response header, put in
every log line written while the request runs (in the event loop and in its worker threads:
asgiref copies context variables into them), and sent upstream with the model call, so that one
id follows a chat from the client through our logs to the model provider's."""

import re
import uuid

from django.http import HttpRequest, HttpResponseBase
from django.utils.deprecation import MiddlewareMixin

from llmserver.http.middleware import InEventLoop
from llmserver.logging import current_request_id

REQUEST_ID_HEADER = "X-Request-Id"
# What we accept from outside: short, and nothing that could forge a log line or a header.
_ACCEPTED = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_from(header_value: str | None) -> str:
    if header_value and _ACCEPTED.fullmatch(header_value):
        return header_value
    return uuid.uuid4().hex


class RequestIdMiddleware(InEventLoop, MiddlewareMixin):
    """Outermost middleware: sets the id before anything logs, and returns it on every response."""

    def process_request(self, request: HttpRequest) -> None:
        request.request_id_token = current_request_id.set(  # type: ignore[attr-defined]
            request_id_from(request.headers.get(REQUEST_ID_HEADER))
        )

    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        response[REQUEST_ID_HEADER] = current_request_id.get()
        # Served sync (WSGI), the thread goes on to other work: take the id back. Under ASGI each
        # request is a task with its own copy of the context, so there is nothing to take back,
        # and a streamed body, written after this returns, still logs under the request's id.
        if not self.async_mode:
            current_request_id.reset(request.request_id_token)  # type: ignore[attr-defined]
        return response
