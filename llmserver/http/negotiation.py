"""Content negotiation whose every failure is 406: DRF answers an unknown `?format=` with a 404,
as if the address did not exist, when it is the format that is not served here."""

from typing import Any

from django.http import Http404
from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation


class ContentNegotiation(DefaultContentNegotiation):
    def filter_renderers(self, renderers: list[Any], format: str) -> list[Any]:
        try:
            return super().filter_renderers(renderers, format)
        except Http404:
            raise NotAcceptable() from None
