"""One error shape for every API error, and the exceptions our services raise.

Every error under `/api/` leaves the server as

    {"success": false, "error_code": "<stable_code>", "error_message": "<a sentence>", "details": {...}}

`error_code` is stable and meant for programs; `error_message` is a sentence for people, translated
into the request's language (Accept-Language; English and Korean ship).

Services raise `ApiError` subclasses (never DRF's exceptions) so that they stay usable from
commands and tests; `api_exception_handler` turns those and DRF's own exceptions into the shape.
The original design's four exception kinds map onto these: ValidationException -> `InvalidInput`
and DRF validation errors, ChatServiceException -> the session errors, OpenAIClientException ->
the `Upstream*` errors. ConfigurationException has no runtime counterpart: bad or missing settings
stop the server at start-up with a sentence saying what to set (llmserver/settings.py).
"""

import logging
import math
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils.encoding import force_str
from django.utils.translation import gettext_lazy as _
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """A failure with an HTTP status, a stable code and a sentence for people."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    error_code: str = "bad_request"
    default_message: Any = _("The request could not be processed.")

    def __init__(
        self,
        message: Any = None,
        *,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message = message if message is not None else self.default_message
        self.details = details or {}
        self.retry_after = retry_after
        super().__init__(force_str(self.message))


class InvalidInput(ApiError):
    error_code = "validation_error"
    default_message = _("The request is invalid.")


class UnstorableText(ApiError):
    """Text no database column can hold: a NUL character (PostgreSQL refuses it) or half of a
    UTF-16 surrogate pair (not Unicode, so it cannot be encoded as UTF-8)."""

    error_code = "invalid_text"
    default_message = _("The request contains text that cannot be stored: a NUL character or invalid Unicode.")


class MaxTokensTooLarge(ApiError):
    error_code = "max_tokens_too_large"
    default_message = _("max_tokens is larger than this model can write in one answer.")


class ContextTooLong(ApiError):
    error_code = "context_too_long"
    default_message = _("The message is too long for the model's context window.")


class ApiKeyNotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    error_code = "api_key_not_found"
    default_message = _("No API key with this id exists.")


class ScopeMissing(ApiError):
    status_code = status.HTTP_403_FORBIDDEN
    error_code = "insufficient_scope"
    default_message = _("This API key does not have the scope this needs.")


class ModelNotAllowed(ApiError):
    status_code = status.HTTP_403_FORBIDDEN
    error_code = "model_not_allowed"
    default_message = _("This API key may not use this model.")


class ModelNotAvailable(ApiError):
    error_code = "model_not_available"
    default_message = _("The upstream assigned to this API key does not serve this model.")


class LimitExceeded(ApiError):
    """A key's limit would be passed. `error_code` names the limit: limit_requests_per_minute,
    limit_tokens_per_day or limit_monthly_budget."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    error_code = "limit_exceeded"
    default_message = _("This API key has reached one of its limits.")

    def __init__(self, message: Any = None, *, error_code: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.error_code = error_code


class PageNotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    error_code = "page_not_found"
    default_message = _("This page of results does not exist.")


class ModelNotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    error_code = "model_not_found"
    default_message = _("This model does not exist or this key may not use it.")


class SessionNotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    error_code = "session_not_found"
    default_message = _("No session with this id exists for your API key.")


class SessionAlreadyExists(ApiError):
    status_code = status.HTTP_409_CONFLICT
    error_code = "session_exists"
    default_message = _("A session with this id already exists for your API key.")


class SessionBusy(ApiError):
    status_code = status.HTTP_409_CONFLICT
    error_code = "session_busy"
    default_message = _(
        "Another message in this session is still being answered; send this one when it has finished."
    )


class IdempotencyKeyReused(ApiError):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    error_code = "idempotency_key_reused"
    default_message = _(
        "This Idempotency-Key was already used with a different request body; use a new key for a new request."
    )


class IdempotencyKeyInUse(ApiError):
    status_code = status.HTTP_409_CONFLICT
    error_code = "idempotency_key_in_use"
    default_message = _("A request with this Idempotency-Key is still being answered; try again when it has finished.")


class UpstreamError(ApiError):
    """The upstream model provider failed; subclasses say how."""

    status_code = status.HTTP_502_BAD_GATEWAY
    error_code = "upstream_error"
    default_message = _("The model provider returned an error; the message was kept and can be retried.")
    # False where the model never took the request up (unreachable, rate limiting, a rejected
    # key): asking again later, with the same Idempotency-Key, is then the point, so no response
    # is kept under the key (chat.idempotency).
    model_answered = True


class UpstreamAuthFailed(UpstreamError):
    error_code = "upstream_auth_failed"
    default_message = _(
        "The model provider rejected the server's API key; the operator has to check OPENAI_API_KEY."
    )
    model_answered = False


class UpstreamCredentialUnreadable(ApiError):
    status_code = status.HTTP_500_INTERNAL_SERVER_ERROR
    error_code = "upstream_credential_unreadable"
    default_message = _(
        "The upstream credential assigned to this API key cannot be decrypted; the operator has to put "
        "its key back in FIELD_ENCRYPTION_KEYS."
    )


class UpstreamRejectedRequest(UpstreamError):
    error_code = "upstream_rejected_request"
    default_message = _(
        "The model provider rejected the request (for example an unknown model or an invalid parameter)."
    )


class UpstreamBadResponse(UpstreamError):
    error_code = "upstream_bad_response"
    default_message = _("The model provider sent a response that could not be read.")


class UpstreamInterrupted(UpstreamError):
    error_code = "upstream_interrupted"
    default_message = _("The model provider's connection broke off in the middle of its answer; what it sent was kept.")


class UpstreamRateLimited(UpstreamError):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    error_code = "upstream_rate_limited"
    default_message = _("The model provider is rate limiting this server; try again later.")
    model_answered = False


class UpstreamUnavailable(UpstreamError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    error_code = "upstream_unavailable"
    default_message = _("The model provider could not be reached; try again later.")
    model_answered = False


class UpstreamTimeout(UpstreamError):
    status_code = status.HTTP_504_GATEWAY_TIMEOUT
    error_code = "upstream_timeout"
    default_message = _("The model provider did not answer in time; try again later.")


INTERNAL_ERROR_MESSAGE = _("The server failed unexpectedly; the error was logged.")


def error_body(*, error_code: str, error_message: Any, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one error shape, with the message translated into the active language."""
    return {
        "success": False,
        "error_code": error_code,
        "error_message": force_str(error_message),
        "details": details or {},
    }


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
    logger.exception("Unhandled error in %s", context.get("where") or context.get("view").__class__.__name__)
    return _response(
        status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        error_code="internal_error",
        message=INTERNAL_ERROR_MESSAGE,
    )


# --- The OpenAI-compatible API's errors (chat.openai_api) -------------------------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(*, status_code: int, error_code: str, message: Any, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}`: what OpenAI's SDKs read. Our stable
    error code is `code`; `details` is kept beside it."""
    details = details or {}
    param = next(iter(details), None) if error_code == "validation_error" else None
    return {
        "error": {
            "message": str(message),
            "type": _ERROR_TYPES.get(status_code, "server_error" if status_code >= 500 else "invalid_request_error"),
            "param": param,
            "code": error_code,
            "details": details,
        }
    }


def openai_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Our one error shape, recast in OpenAI's (same status, same code, same sentence)."""
    response = api_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "error_code" in response.data:
        body = response.data
        response.data = openai_error(
            status_code=response.status_code, error_code=body["error_code"], message=body["error_message"],
            details=body.get("details"),
        )
    return response


API_PATH_PREFIXES = ("/api/", "/v1/")
OPENAI_PATH_PREFIX = "/v1/"


def _api_error_response(request: HttpRequest, *, status_code: int, error_code: str, message: Any) -> HttpResponse | None:
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


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500 for failures outside DRF views (middleware, plain views)."""
    return _api_error_response(
        request, status_code=500, error_code="internal_error", message=INTERNAL_ERROR_MESSAGE
    ) or defaults.server_error(request)
