"""The handlers that give every failure one of the API's error shapes (errors.py): DRF's exception
handler for each API, and Django's 404 and 500 handlers for addresses no API view answers.

The original design's four exception kinds map onto these: ValidationException -> `InvalidInput`
and DRF validation errors, ChatServiceException -> the session errors, OpenAIClientException ->
the `Upstream*` errors (chat/exceptions.py). ConfigurationException has no runtime counterpart:
bad or missing settings stop the server at start-up with a sentence saying what to set
(llmserver/settings.py).
"""

import logging
import math
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils.translation import gettext_lazy as _
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response

from llmserver.db import unavailable
from llmserver.http.errors import (
    API_PATH_PREFIXES,
    INTERNAL_ERROR_MESSAGE,
    OPENAI_PATH_PREFIX,
    ApiError,
    error_body,
    openai_error,
)

# The name these log lines have always had (operators filter on it), not this module's.
logger = logging.getLogger("llmserver.errors")


# DRF's own exceptions, by class, mapped to our codes and sentences. Their own texts are not used:
# they vary by field and are not translated into Korean.
_DRF_ERRORS: list[tuple[type[Exception], str, Any]] = [
    (drf_exceptions.ParseError, "malformed_request", _("The request body could not be parsed; send valid JSON.")),
    (
        drf_exceptions.NotAuthenticated,
        "authentication_required",
        _("An API key is required: send it as 'Authorization: Bearer <key>'."),
    ),
    (
        drf_exceptions.AuthenticationFailed,
        "invalid_api_key",
        _("The API key is invalid, revoked or expired."),
    ),
    (drf_exceptions.PermissionDenied, "permission_denied", _("This API key may not do this.")),
    (drf_exceptions.NotFound, "not_found", _("Nothing exists at this address.")),
    (drf_exceptions.MethodNotAllowed, "method_not_allowed", _("This method is not allowed here.")),
    (drf_exceptions.NotAcceptable, "not_acceptable", _("No response format matches the Accept header.")),
    (
        drf_exceptions.UnsupportedMediaType,
        "unsupported_media_type",
        _("Send the request body as JSON with 'Content-Type: application/json'."),
    ),
    (drf_exceptions.Throttled, "rate_limited", _("Too many requests; try again later.")),
]


def _response(
    *, status_code: int, error_code: str, message: Any, details: dict[str, Any] | None = None,
    retry_after: float | None = None, headers: dict[str, str] | None = None,
) -> Response:
    response = Response(
        error_body(error_code=error_code, error_message=message, details=details),
        status=status_code,
        headers=headers,
    )
    if retry_after is not None:
        response["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every exception raised in an API view becomes the one shape."""
    if isinstance(exc, ApiError):
        return _response(
            status_code=exc.status_code,
            error_code=exc.error_code,
            message=exc.message,
            details=exc.details,
            retry_after=exc.retry_after,
        )
    if isinstance(exc, drf_exceptions.ValidationError):
        return _response(
            status_code=status.HTTP_400_BAD_REQUEST,
            error_code="validation_error",
            message=_("The request is invalid; 'details' says what is wrong with each field."),
            details=exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail},
        )
    if (database_error := unavailable(exc)) is not None:
        # The database failing is not a bug: said once, without a traceback, and answered 503.
        logger.warning("%s in %s: %s", database_error.error_code, _where(context), exc)
        return api_exception_handler(database_error, context)
    if isinstance(exc, RequestDataTooBig):
        return _response(
            status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            error_code="request_too_large",
            message=_("The request body is too large."),
        )
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    for drf_class, error_code, message in _DRF_ERRORS:
        if isinstance(exc, drf_class):
            headers = {}
            auth_header = getattr(exc, "auth_header", None)
            if auth_header:
                headers["WWW-Authenticate"] = auth_header
            return _response(
                status_code=exc.status_code,  # type: ignore[attr-defined]
                error_code=error_code,
                message=message,
                retry_after=getattr(exc, "wait", None),
                headers=headers,
            )
    if isinstance(exc, drf_exceptions.APIException):
        return _response(status_code=exc.status_code, error_code=exc.default_code, message=exc.detail)
    # A bug: log it with its traceback and keep the shape; the message reveals nothing internal.
    logger.exception("Unhandled error in %s", _where(context))
    return _response(
        status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        error_code="internal_error",
        message=INTERNAL_ERROR_MESSAGE,
    )


def _where(context: dict[str, Any]) -> str:
    return context.get("where") or context.get("view").__class__.__name__


def _first_problem(detail: Any) -> str:
    """The first sentence in a field's errors, however deeply DRF nested them (a list's item, a
    dict's key)."""
    if isinstance(detail, dict):
        return next((_first_problem(value) for value in detail.values()), "")
    if isinstance(detail, list):
        return next((found for found in map(_first_problem, detail) if found), "")
    return str(detail)


def openai_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Our one error shape, recast in OpenAI's (same status, same code, same sentence), or in the
    words of the upstream whose failure it is (`ApiError.openai_fields`)."""
    response = api_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "error_code" in response.data:
        body = response.data
        message = body["error_message"]
        if isinstance(exc, drf_exceptions.ValidationError) and isinstance(exc.detail, dict):
            # The SDKs show only the message: it names each field and what is wrong with it.
            message = _("The request is invalid: %(problems)s") % {"problems": "; ".join(
                f"{name}: {_first_problem(problem)}" for name, problem in exc.detail.items()
            )}
        response.data = openai_error(
            status_code=response.status_code, error_code=body["error_code"], message=message,
            details=body.get("details"),
        )
        if isinstance(exc, ApiError) and exc.openai_fields:
            response.data["error"].update(exc.openai_fields)
    return response


def _api_error_response(
    request: HttpRequest, *, status_code: int, error_code: str, message: Any
) -> HttpResponse | None:
    """An error outside DRF views in the shape of the API the address belongs to (OpenAI's under
    /v1/, ours under /api/), or None for other addresses (Django's own pages)."""
    if request.path.startswith(OPENAI_PATH_PREFIX):
        return JsonResponse(openai_error(status_code=status_code, error_code=error_code, message=message),
                            status=status_code)
    if request.path.startswith(API_PATH_PREFIXES):
        return JsonResponse(error_body(error_code=error_code, error_message=message), status=status_code)
    return None


# Exempt: the API's clients send no CSRF token, and a DELETE to an address that does not exist
# must be a 404 in the error shape, not Django's HTML page about a missing CSRF cookie.
@csrf_exempt
def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler404: the API's error shape for API addresses no view matched, Django's page elsewhere."""
    return _api_error_response(
        request, status_code=404, error_code="not_found", message=_("Nothing exists at this address.")
    ) or defaults.page_not_found(request, exception or Http404())


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler400 (a request Django itself refuses: a Host not in ALLOWED_HOSTS, a suspicious
    path): the API's error shape for API addresses, Django's page elsewhere."""
    return _api_error_response(
        request, status_code=400, error_code="bad_request", message=_("The request could not be processed.")
    ) or defaults.bad_request(request, exception or Exception())


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500 for failures outside DRF views (middleware, plain views)."""
    return _api_error_response(
        request, status_code=500, error_code="internal_error", message=INTERNAL_ERROR_MESSAGE
    ) or defaults.server_error(request)
