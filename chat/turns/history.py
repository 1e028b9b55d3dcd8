"""The stored history a turn's prompt is built from, read newest first a page at a time."""

from collections.abc import Iterator

from chat.models import Message
from chat.turns import sql
from chat.turns.prompt import HistoryMessage

# History is read newest first in pages of this size, only as far as the context budget reaches.
HISTORY_PAGE_SIZE = 100


def history_newest_first(*, session_pk: int) -> Iterator[HistoryMessage]:
    """The session's replayable messages, newest first, fetched a page at a time
    (index chat_message_history_idx). Failed, pending and incomplete messages are never replayed.
    """
    before_id: int | None = None
    while True:
        rows = sql.history_page(
            session_pk=session_pk, status=Message.Status.COMPLETE, before_id=before_id, size=HISTORY_PAGE_SIZE
        )
        for message_id, role, content, token_count, token_encoding in rows:
            yield HistoryMessage(
                message_id=message_id, role=role, content=content, token_count=token_count,
                token_encoding=token_encoding,
            )
            before_id = message_id
        if len(rows) < HISTORY_PAGE_SIZE:
            return
