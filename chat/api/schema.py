"""What the chat API's views share in their OpenAPI description: the error answers, and the page
shape of every list."""

from collections.abc import Callable, Iterable
from typing import Any

from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import serializers

from llmserver.http.pagination import ApiPagination
from llmserver.http.schema import ErrorSerializer


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    return {code: OpenApiResponse(ErrorSerializer, description="The one error shape.") for code in statuses}


# `page` and `page_size` of every list (the views are plain APIViews, so the schema generator
# does not find the paginator on its own).
PAGE_PARAMETERS = [
    OpenApiParameter(name=p["name"], type=p["schema"], location=OpenApiParameter.QUERY, description=p["description"])
    for p in ApiPagination().get_schema_operation_parameters(view=None)
]


def paged_list(
    *, operation_id: str, summary: str, page_name: str, errors: Iterable[int] = (400, 401, 404)
) -> Callable[[type], type]:
    """Documents a PagedListView's `GET`: the page parameters, and a page of its `item_serializer`."""

    def document(view_class: Any) -> Any:
        page = inline_serializer(
            name=page_name,
            fields={
                "count": serializers.IntegerField(),
                "next": serializers.URLField(allow_null=True),
                "previous": serializers.URLField(allow_null=True),
                "results": view_class.item_serializer(many=True),
            },
        )
        get = extend_schema(
            operation_id=operation_id, summary=summary, parameters=PAGE_PARAMETERS,
            responses={200: page, **error_responses(*errors)},
        )
        return extend_schema_view(get=get)(view_class)

    return document
