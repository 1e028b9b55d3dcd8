"""Django's standard middleware, run in the event loop instead of a worker thread.

Under ASGI, Django runs each hook of an old-style middleware (`process_request`,
`process_response`) through `sync_to_async`: a hop to the request's worker thread and back,
twice per middleware. With the eight standard middlewares that was fifteen hops on every
request, about 0.8 ms of the 2 ms a bare request cost (measured with bench/chat_throughput.py's
load generator on the health endpoint: 537 requests/s with the hops, 946 with one middleware).

The hooks below do no I/O — they read headers and cookies, set headers, and install lazy
objects — so they are called directly. The one exception is saving a session, which writes to
the database: `SessionMiddleware` still hops to the thread when the request used its session
(the admin); API requests never do.
"""

from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.http import HttpRequest, HttpResponseBase
from django.middleware import clickjacking, common, csrf, locale, security


class InEventLoop:
    """`__acall__` for a middleware whose hooks never block: call them, don't hop."""

    get_response: Any

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            response = self.process_response(request, response)
        return response


class SecurityMiddleware(InEventLoop, security.SecurityMiddleware):
    pass


class LocaleMiddleware(InEventLoop, locale.LocaleMiddleware):
    pass


class CommonMiddleware(InEventLoop, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(InEventLoop, csrf.CsrfViewMiddleware):
    pass


class AuthenticationMiddleware(InEventLoop, auth.AuthenticationMiddleware):
    pass


class MessageMiddleware(InEventLoop, messages.MessageMiddleware):
    pass


class XFrameOptionsMiddleware(InEventLoop, clickjacking.XFrameOptionsMiddleware):
    pass


class SessionMiddleware(sessions.SessionMiddleware):
    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        self.process_request(request)
        response = await self.get_response(request)
        if request.session.modified or settings.SESSION_SAVE_EVERY_REQUEST:
            # It will save the session: database work, in the request's thread. (A session only
            # read, as on every admin page, needs no save and so no hop.)
            return await sync_to_async(self.process_response, thread_sensitive=True)(request, response)
        return self.process_response(request, response)
