"""Server-sent events: the wire format of streamed answers (https://html.spec.whatwg.org/#server-sent-events)."""

import json
from collections.abc import AsyncIterator
from typing import Any

from django.http import StreamingHttpResponse
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request

CONTENT_TYPE = "text/event-stream"


def sse_event(data: Any, *, event: str | None = None) -> bytes:
    """One event. `data` is JSON-encoded on one line (JSON escapes newlines), or sent as it is
    when it is already a string (OpenAI's closing `[DONE]`)."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def event_stream_response(
    events: AsyncIterator[bytes], *, headers: dict[str, str] | None = None
) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type=CONTENT_TYPE, headers=headers)
    # Every event must reach the client as it is written: no caching, and no buffering by a
    # reverse proxy in front (nginx honours X-Accel-Buffering).
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


class EventStreamRenderer(BaseRenderer):
    """Lets a client that accepts only text/event-stream call a streaming endpoint: without it,
    content negotiation refuses such a request with 406. Whatever is answered before a stream
    starts (an error, mostly) goes out as one event: `error` for an error status (in whichever
    error shape the view uses), else `done`."""

    media_type = CONTENT_TYPE
    format = "event-stream"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        if data is None:
            return b""
        response = (renderer_context or {}).get("response")
        failed = response is not None and response.status_code >= 400
        return sse_event(data, event="error" if failed else "done")


def json_unless_streaming(request: Request) -> None:
    """Answer `request` in JSON, whatever its Accept header, unless its body asks for a stream
    (`"stream": true`): the event-stream renderer is there for streaming clients, and a client
    that asked for one answer (a library sending `Accept: text/event-stream` on every call, say)
    must get JSON, not one SSE event. Called before the body is validated, so that its errors
    come in JSON too."""
    # (An unreadable body raises its parse error here, as reading it in the view would.)
    streaming = isinstance(request.data, dict) and request.data.get("stream") is True
    if not streaming and isinstance(getattr(request, "accepted_renderer", None), EventStreamRenderer):
        request.accepted_renderer, request.accepted_media_type = JSONRenderer(), JSONRenderer.media_type
