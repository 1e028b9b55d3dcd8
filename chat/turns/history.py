"""The stored history a turn's prompt is built from, read newest first a page at a time."""

from collections.abc import Iterator

from chat.models import Message
from chat.turns import sql
from chat.turns.prompt import HistoryMessage

# History is read newest first in pages of this size, only as far as the context budget reaches.
HISTORY_PAGE_SIZE = 100


def history_newest_first(
    *, session_pk: int, before_id: int | None = None, page_size: int = HISTORY_PAGE_SIZE
) -> Iterator[HistoryMessage]:
    """The session's replayable messages (older than `before_id`, when given), newest first, fetched
    a page at a time (index chat_message_history_idx). Failed, pending and incomplete messages are
    never replayed.
    """
    read_json = sql.json_field(Message, "parts")
    while True:
        rows = sql.history_page(
            session_pk=session_pk, status=Message.Status.COMPLETE, before_id=before_id, size=page_size
        )
        for message_id, role, content, token_count, token_encoding, parts, tool_calls, tool_call_id, name in rows:
            yield HistoryMessage(
                message_id, role, content, token_count, token_encoding,
                None if parts is None else read_json(parts), None if tool_calls is None else read_json(tool_calls),
                tool_call_id, name,
            )
            before_id = message_id
        if len(rows) < page_size:
            return


def last_answer(*, session_pk: int) -> HistoryMessage | None:
    """The session's newest replayable message: the assistant message whose tool calls new tool
    results answer, if it made any."""
    return next(history_newest_first(session_pk=session_pk, page_size=1), None)
