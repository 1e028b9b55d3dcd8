"""The body limit in front of Django (llmserver/http/body_limit.py): a body too large (413) or sent
without a length (411) is refused before it is read, in the error shape of the API the address
belongs to: OpenAI's under /v1/, so that its SDKs raise their usual exceptions, ours elsewhere.
Called as the ASGI application it is; over real HTTP in tests/e2e/test_served.py."""

import json
from typing import Any

from asgiref.sync import async_to_sync

from llmserver.http.body_limit import RequestBodyLimit

TOO_LARGE = {
    "message": "The request body is too large.", "type": "invalid_request_error", "param": None,
    "code": "request_too_large", "details": {},
}
LENGTH_REQUIRED = {
    "message": "Send the request body with a Content-Length header.", "type": "invalid_request_error",
    "param": None, "code": "length_required", "details": {},
}


async def _never_reached(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the body limit let the request through")


def refusal(path: str, *headers: tuple[bytes, bytes]) -> tuple[int, dict[bytes, bytes], Any]:
    """The status, headers and JSON body RequestBodyLimit answers a POST to `path` with."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body limit read the body")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-type", b"application/json"),
                                                                          *headers]}
    async_to_sync(RequestBodyLimit(_never_reached))(scope, receive, send)
    start, body = sent
    return start["status"], dict(start["headers"]), json.loads(body["body"])


def test_a_body_too_large_for_the_openai_api_is_refused_in_openais_shape(settings: Any) -> None:
    settings.MAX_REQUEST_BYTES = 1000

    status, headers, body = refusal("/v1/chat/completions", (b"content-length", b"1001"))

    assert (status, headers[b"connection"]) == (413, b"close")
    assert body == {"error": TOO_LARGE}


def test_a_body_without_a_length_for_the_openai_api_is_refused_in_openais_shape() -> None:
    status, _headers, body = refusal("/v1/chat/completions", (b"transfer-encoding", b"chunked"))

    assert status == 411
    assert body == {"error": LENGTH_REQUIRED}


def test_the_openai_shape_speaks_the_clients_language_too(settings: Any) -> None:
    settings.MAX_REQUEST_BYTES = 1000

    _status, _headers, body = refusal("/v1/chat/completions", (b"content-length", b"1001"),
                                      (b"accept-language", b"ko"))

    assert body["error"]["message"] == "요청 본문이 너무 큽니다."


def test_elsewhere_the_refusals_keep_the_servers_own_shape(settings: Any) -> None:
    settings.MAX_REQUEST_BYTES = 1000

    too_large = refusal("/api/v1/chat", (b"content-length", b"1001"))
    unsized = refusal("/api/v1/chat", (b"transfer-encoding", b"chunked"))

    assert too_large[::2] == (413, {
        "success": False, "error_code": "request_too_large", "error_message": "The request body is too large.",
        "details": {},
    })
    assert unsized[::2] == (411, {
        "success": False, "error_code": "length_required",
        "error_message": "Send the request body with a Content-Length header.", "details": {},
    })


def test_a_browser_app_can_read_why_its_upload_was_refused(settings: Any) -> None:
    """The refusal comes before the CORS middleware: it carries the same CORS headers itself."""
    settings.MAX_REQUEST_BYTES = 1000
    settings.CORS_ALLOW_ALL_ORIGINS, settings.CORS_ALLOWED_ORIGINS = False, ["https://app.example"]

    _status, listed, _body = refusal("/v1/chat/completions", (b"content-length", b"1001"),
                                     (b"origin", b"https://app.example"))
    _status, unlisted, _body = refusal("/v1/chat/completions", (b"content-length", b"1001"),
                                       (b"origin", b"https://evil.example"))
    _status, admin, _body = refusal("/admin/login/", (b"content-length", b"1001"), (b"origin", b"https://app.example"))

    assert listed[b"access-control-allow-origin"] == b"https://app.example"
    assert b"X-Session-Id" in listed[b"access-control-expose-headers"]
    assert b"access-control-allow-origin" not in unlisted
    assert b"access-control-allow-origin" not in admin
