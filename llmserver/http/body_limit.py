"""ASGI middleware: refuse an oversized or unsized request body before it is read.

Django's ASGI handler reads the whole body (spooling it to disk) before any view, authentication
or DATA_UPLOAD_MAX_MEMORY_SIZE check runs, so a 200 MB upload is received in full just to be
refused. Here the declared Content-Length is checked first: the server (uvicorn) guarantees the
body is no longer than declared. A body without a length (chunked transfer encoding) gets 411:
Django would otherwise read it as empty.
"""

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils import translation
from django.utils.translation import gettext_lazy as _

from llmserver.http.errors import OPENAI_PATH_PREFIX, error_body, openai_error

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestBodyLimit:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _refuse(scope, send, 400, "malformed_request", _("The Content-Length header is not a number."))
                return
            if int(declared) > settings.MAX_REQUEST_BYTES:
                await _refuse(scope, send, 413, "request_too_large", _("The request body is too large."))
                return
        elif b"transfer-encoding" in headers:
            await _refuse(
                scope, send, 411, "length_required", _("Send the request body with a Content-Length header.")
            )
            return
        await self.app(scope, receive, send)


def _cors_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """What the CORS middleware (which this answer never reaches) would add, so that a browser app
    can read why its upload was refused: the same origins, the same exposed headers."""
    origin = dict(scope["headers"]).get(b"origin", b"").decode("latin-1")
    if not origin or not re.match(settings.CORS_URLS_REGEX, scope["path"]):
        return []
    if settings.CORS_ALLOW_ALL_ORIGINS:
        allowed = "*"
    elif origin in settings.CORS_ALLOWED_ORIGINS:
        allowed = origin
    else:
        return []
    return [(b"access-control-allow-origin", allowed.encode("latin-1")), (b"vary", b"origin"),
            (b"access-control-expose-headers", ", ".join(settings.CORS_EXPOSE_HEADERS).encode())]


async def _refuse(scope: Scope, send: Send, status: int, error_code: str, message: Any) -> None:
    """Answer in the error shape of the API the address belongs to (OpenAI's under /v1/, so that
    its SDKs raise their usual exceptions; ours elsewhere), in the language the client asked for,
    and close: the unread body must not be taken for the next request on the connection."""
    request = HttpRequest()
    request.META["HTTP_ACCEPT_LANGUAGE"] = dict(scope["headers"]).get(b"accept-language", b"").decode("latin-1")
    with translation.override(translation.get_language_from_request(request)):
        if scope["path"].startswith(OPENAI_PATH_PREFIX):
            body = openai_error(status_code=status, error_code=error_code, message=message)
        else:
            body = error_body(error_code=error_code, error_message=message)
    payload = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close"),
            *_cors_headers(scope),
        ],
    })
    await send({"type": "http.response.body", "body": payload})
