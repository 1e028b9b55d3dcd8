"""What the chat server stores: client keys, sessions, their messages, and usage per upstream call,
a module a domain.

Integrity lives here, in named constraints the database enforces; behaviour lives in each domain's
services (writes) and selectors (reads): chat/keys, chat/sessions, chat/turns, chat/usage, chat/upstreams.
"""

from chat.models.idempotency import IdempotentRequest
from chat.models.keys import (
    MAX_MONTHLY_BUDGET_USD,
    MAX_REQUESTS_PER_MINUTE,
    MAX_TOKENS_PER_DAY,
    ApiKey,
    ApiKeyEvent,
    UpstreamCredential,
    default_scopes,
)
from chat.models.responses import Response
from chat.models.sessions import ChatSession, Message, StoredImage
from chat.models.usage import LimitCounter, ModelPrice, UsageCounts, UsageDaily, UsageDailyTotal, UsageRecord

__all__ = [
    "MAX_MONTHLY_BUDGET_USD", "MAX_REQUESTS_PER_MINUTE", "MAX_TOKENS_PER_DAY", "ApiKey", "ApiKeyEvent", "ChatSession",
    "IdempotentRequest", "LimitCounter", "Message", "ModelPrice", "Response", "StoredImage", "UpstreamCredential",
    "UsageCounts", "UsageDaily", "UsageDailyTotal", "UsageRecord", "default_scopes",
]
