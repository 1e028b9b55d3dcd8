"""The chat app's failures, each with its HTTP status, stable code and sentence (llmserver.http
turns them into the API's error shapes): sessions, models, limits, idempotency and upstream."""

from typing import Any

from django.utils.translation import gettext_lazy as _
from rest_framework import status

from llmserver.http.errors import ApiError


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


class ModelNotPriced(ApiError):
    """A key with a budget asked for a model with no price: its cost could not be counted."""

    status_code = status.HTTP_403_FORBIDDEN
    error_code = "model_not_priced"
    default_message = _("This API key has a budget, and this model has no price, so its cost could not be counted.")


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
    # key, a rejected request): asking again later, with the same Idempotency-Key, is then the
    # point, so no response is kept under the key (chat/api/idempotency.py).
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
    """Upstream refused the request itself (an unknown model, a parameter it does not support): a
    4xx other than 401, 403 and 429 (chat/providers/rejection.py). The client gets the same status,
    which its SDK does not ask again, where a 502 was asked again and recorded three times; under
    /v1/ it also gets upstream's own message, code and param (`openai_fields`)."""

    status_code = status.HTTP_400_BAD_REQUEST
    error_code = "upstream_rejected_request"
    default_message = _(
        "The model provider rejected the request (for example an unknown model or an invalid parameter)."
    )
    # Refused before anything was written or billed: the same request may be sent again, with
    # the same Idempotency-Key, and succeed once what upstream refused is fixed (a model deployed).
    model_answered = False

    def __init__(
        self, message: Any = None, *, status_code: int | None = None, openai_fields: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        if status_code is not None:
            self.status_code = status_code
        self.openai_fields = openai_fields


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


class ImageNotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    error_code = "image_not_found"
    default_message = _("No image with this hash was sent with your API key.")


class ToolResultsMismatch(ApiError):
    """Tool results that do not answer the session's last tool calls exactly."""

    error_code = "tool_results_mismatch"
    default_message = _("The tool results do not answer the tool calls of the session's last answer.")


class ResponseNotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    error_code = "response_not_found"
    default_message = _("No stored response with this id exists for your API key.")


class ConversationNotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    error_code = "conversation_not_found"
    default_message = _("No conversation with this id exists for your API key.")


class ItemNotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    error_code = "item_not_found"
    default_message = _("No item with this id is in the conversation.")
