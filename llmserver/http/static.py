"""Static files, served by the ASGI application itself (see llmserver/asgi.py)."""

from asgiref.sync import sync_to_async
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.exceptions import SuspiciousOperation
from django.core.handlers.exception import response_for_exception
from django.http import HttpRequest, HttpResponseBase


class StaticFilesHandler(ASGIStaticFilesHandler):
    """Django's handler, but a path that leaves the static directory (`/static/../../etc/passwd`,
    sent as it is by a client that does not normalise it) is a 400, as Django answers such paths
    elsewhere: Django's own handler let the error through as a 500, with a traceback logged for
    every such request."""

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        try:
            return await super().get_response_async(request)
        except SuspiciousOperation as exc:
            return await sync_to_async(response_for_exception, thread_sensitive=False)(request, exc)
