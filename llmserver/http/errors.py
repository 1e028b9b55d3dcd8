"""The one error shape of the APIs, and the exception every failure the APIs report is made of.

Every error under `/api/` leaves the server as

    {"success": false, "error_code": "<stable_code>", "error_message": "<a sentence>", "details": {...}}

and every error under `/v1/` in OpenAI's shape (`openai_error`), so that OpenAI's SDKs raise their
usual exceptions. `error_code` is stable and meant for programs; `error_message` is a sentence for
people, translated into the request's language (Accept-Language; English and Korean ship).

Services raise `ApiError` subclasses (never DRF's exceptions), so that they stay usable from
commands and tests; each app keeps its own next to its domain (chat/exceptions.py). The handlers
that turn them, and DRF's own exceptions, into the shapes are in handlers.py.
"""

from typing import Any

from django.utils.encoding import force_str
from django.utils.translation import gettext_lazy as _
from rest_framework import status


class ApiError(Exception):
    """A failure with an HTTP status, a stable code and a sentence for people."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    error_code: str = "bad_request"
    default_message: Any = _("The request could not be processed.")
    # Under /v1/, fields that replace ours in OpenAI's shape (`message`, `type`, `param`, `code`):
    # for a failure that is an OpenAI-compatible upstream's own, passed on as it said it.
    openai_fields: dict[str, Any] | None = None

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


class ServerBusy(ApiError):
    """More requests than the server can take at once: they wait their turn at the database for a
    while (DATABASE_QUEUE_TIMEOUT_SECONDS), and are then answered this, never a 500."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    error_code = "server_busy"
    default_message = _("The server is busy; try again in a moment.")

    def __init__(self, message: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("retry_after", 1)
        super().__init__(message, **kwargs)


class DatabaseUnavailable(ApiError):
    """The database could not be reached, or dropped the connection: nothing was stored half."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    error_code = "database_unavailable"
    default_message = _("The server's database is unavailable; try again in a moment.")

    def __init__(self, message: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("retry_after", 1)
        super().__init__(message, **kwargs)


class PageNotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    error_code = "page_not_found"
    default_message = _("This page of results does not exist.")


INTERNAL_ERROR_MESSAGE = _("The server failed unexpectedly; the error was logged.")


def error_body(*, error_code: str, error_message: Any, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one error shape, with the message translated into the active language."""
    return {
        "success": False,
        "error_code": error_code,
        "error_message": force_str(error_message),
        "details": details or {},
    }


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


def openai_error(
    *, status_code: int, error_code: str, message: Any, details: dict[str, Any] | None = None
) -> dict[str, Any]:
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


API_PATH_PREFIXES = ("/api/", "/v1/")
OPENAI_PATH_PREFIX = "/v1/"
