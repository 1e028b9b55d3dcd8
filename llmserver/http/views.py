"""The base of the API's async views."""

from inspect import iscoroutinefunction
from typing import Any

from adrf.views import APIView
from asgiref.sync import sync_to_async
from django.http.response import HttpResponseBase

from llmserver.db import run_in_thread


class AsyncApiView(APIView):
    """adrf's async APIView, whose `initial` (authentication: a database query; permissions;
    throttles) runs in its turn at the database, with its connection handed back at once
    (llmserver/db.py's run_in_thread), where adrf runs it in a thread that holds the connection
    until the request ends: under a burst, the pool's connections were all held by requests
    waiting for the CPU. The rest is adrf's `async_dispatch`, as it is."""

    async def async_dispatch(self, request: Any, *args: Any, **kwargs: Any) -> HttpResponseBase:
        self.args = args
        self.kwargs = kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        try:
            await run_in_thread(self.initial, request, *args, **kwargs)
            handler = self.http_method_not_allowed
            if request.method.lower() in self.http_method_names:
                handler = getattr(self, request.method.lower(), self.http_method_not_allowed)
            if iscoroutinefunction(handler):
                response = await handler(request, *args, **kwargs)
            else:
                response = await sync_to_async(handler)(request, *args, **kwargs)
        except Exception as exc:
            response = self.handle_exception(exc)
        self.response = self.finalize_response(request, response, *args, **kwargs)
        return self.response
