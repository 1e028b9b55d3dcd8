"""Page-number pagination for every list, with errors in the one shape."""

from typing import Any

from django.db.models import QuerySet
from django.utils.translation import gettext as _
from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request

from llmserver.http.errors import InvalidInput, PageNotFound

# Longer is no page anyone has: and int() refuses over 4,300 digits with a ValueError.
MAX_DIGITS = 9


def _whole_number(raw: str) -> int | None:
    # isascii: str.isdigit() also accepts digits of other scripts, which int() then reads.
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= MAX_DIGITS else None


class ApiPagination(PageNumberPagination):
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100

    def get_page_size(self, request: Request) -> int:
        """DRF quietly uses the default for a page_size it cannot read and the maximum for one over
        it; a client asking for 1,000 rows should learn that it gets 100."""
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        size = _whole_number(raw)
        if size is None or not 1 <= size <= self.max_page_size:
            message = _("page_size must be a whole number from 1 to %(max)d.") % {"max": self.max_page_size}
            raise InvalidInput(message, details={self.page_size_query_param: [message]})
        return size

    def paginate_queryset(self, queryset: QuerySet, request: Request, view: Any = None) -> list[Any]:
        raw_page = request.query_params.get(self.page_query_param)
        if raw_page is not None and raw_page not in self.last_page_strings and (_whole_number(raw_page) or 0) < 1:
            message = _("page must be a whole number of 1 or more.")
            raise InvalidInput(message, details={self.page_query_param: [message]})
        try:
            return super().paginate_queryset(queryset, request, view)  # type: ignore[return-value]
        except NotFound:
            raise PageNotFound() from None

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        bounds = {
            self.page_query_param: {"minimum": 1, "maximum": 10**MAX_DIGITS - 1},
            self.page_size_query_param: {"minimum": 1, "maximum": self.max_page_size},
        }
        for parameter in parameters:
            parameter["schema"].update(bounds.get(parameter["name"], {}))
        return parameters
