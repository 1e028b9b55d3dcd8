"""The Responses API's rows around a turn: a response begun with the turn's first step and ended with
its last, in the same transactions; and the history a branch copies into its own session."""

from datetime import datetime

from django.utils import timezone

from chat.exceptions import ResponseNotFound
from chat.models import Message, Response
from chat.turns.inputs import ResponseStart

# The fields copied when a branch takes its history into a new session: the message as it was.
_COPIED_FIELDS = (
    "role", "content", "parts", "tool_calls", "tool_call_id", "name", "status", "token_count", "token_encoding",
    "prompt_tokens", "completion_tokens", "model", "latency_ms", "error_code", "created_at",
)


def session_fork_history(*, source_session_pk: int, through_message_id: int | None, target_session_pk: int) -> None:
    """Copy a session's replayable history, up to and with `through_message_id`, into a new session:
    a response that continues one that is not its session's last starts a branch, whose context is
    that response's own history, not what the session did since."""
    source = Message.objects.filter(
        session_id=source_session_pk, status=Message.Status.COMPLETE, id__lte=through_message_id
    ).order_by("id").values(*_COPIED_FIELDS)
    Message.objects.bulk_create(Message(session_id=target_session_pk, **fields) for fields in source)


def response_begin(
    *, api_key_id: int, session_pk: int, start: ResponseStart, first_message_id: int, model: str, now: datetime
) -> int:
    response = Response.objects.create(
        api_key_id=api_key_id, public_id=start.public_id, session_id=session_pk, parent_id=start.parent_pk,
        first_message_id=first_message_id, model=model, request=start.request, created_at=now,
    )
    return response.pk


def response_end(
    *, response_pk: int, status: str, output_message_id: int | None = None, model: str = "", input_tokens: int = 0,
    output_tokens: int = 0, error_code: str = "",
) -> None:
    changes = {
        "status": status, "output_message_id": output_message_id, "input_tokens": input_tokens,
        "output_tokens": output_tokens, "error_code": error_code, "completed_at": timezone.now(),
    }
    if model:
        changes["model"] = model
    Response.objects.filter(pk=response_pk).update(**changes)


def response_get(*, api_key_id: int, public_id: str) -> Response:
    """One of the key's stored responses. Another key's is 'not found', never 'forbidden'."""
    response = Response.objects.filter(api_key_id=api_key_id, public_id=public_id).select_related("session").first()
    if response is None:
        raise ResponseNotFound(details={"response_id": public_id})
    return response


def session_last_message_id(*, session_pk: int) -> int | None:
    """The newest replayable message of a session (index chat_message_history_idx): a response whose
    answer it is is the session's last, and is continued in the session; another one branches."""
    return (
        Message.objects.filter(session_id=session_pk, status=Message.Status.COMPLETE)
        .order_by("-id").values_list("id", flat=True).first()
    )


def response_input_messages(*, response: Response) -> list[Message]:
    """The messages a response was asked: its turn's new messages, up to its answer."""
    messages = Message.objects.filter(session_id=response.session_id, id__gte=response.first_message_id)
    if response.output_message_id is not None:
        messages = messages.filter(id__lt=response.output_message_id)
    else:
        messages = messages.exclude(role=Message.Role.ASSISTANT)
    return list(messages.order_by("id"))
