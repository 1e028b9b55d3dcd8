"""Sessions and their messages in the admin: the record of what happened, read-only."""

from django.contrib import admin

from chat.admin.common import ReadOnlyAdmin
from chat.models import ChatSession, Message


@admin.register(ChatSession)
class ChatSessionAdmin(ReadOnlyAdmin):
    list_display = [
        "public_id", "title", "api_key", "model", "prompt_tokens_total", "completion_tokens_total", "updated_at",
    ]
    list_select_related = ["api_key"]
    search_fields = ["public_id", "title"]
    exclude = ["turn_started_at", "turn_heartbeat_at"]


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ["id", "session", "role", "status", "prompt_tokens", "completion_tokens", "model", "created_at"]
    list_filter = ["role", "status"]
    list_select_related = ["session"]
    search_fields = ["session__public_id"]
