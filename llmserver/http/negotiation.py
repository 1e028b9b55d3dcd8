"""Content negotiation whose every failure is 406: DRF answers an unknown `?format=` with a 404,
as if the address did not exist, when it is the format that is not served here; and it takes an
empty `?format=` for no format at all, when the client asked for one and named none."""

from typing import Any

from django.http import Http404
from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation


class ContentNegotiation(DefaultContentNegotiation):
    def select_renderer(self, request: Any, renderers: list[Any], format_suffix: str | None = None) -> Any:
        if request.query_params.get(self.settings.URL_FORMAT_OVERRIDE) == "":
            raise NotAcceptable()
        return super().select_renderer(request, renderers, format_suffix)

    def filter_renderers(self, renderers: list[Any], format: str) -> list[Any]:
        try:
            return super().filter_renderers(renderers, format)
        except Http404:
            raise NotAcceptable() from None
