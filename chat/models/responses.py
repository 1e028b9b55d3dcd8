"""Responses (OpenAI's Responses API): a response is a turn of a session, under an id of its own."""

from django.db import models
from django.db.models import F
from django.utils import timezone

from chat.models.keys import ApiKey
from chat.models.sessions import ChatSession


class Response(models.Model):
    """One turn of a session as the Responses API names it: its input is the turn's new messages
    (from `first_message_id`), its output the answer (`output_message_id`, once written). The
    messages are the session's own rows; this row adds the id, the link to the response it
    continued, and what the request asked, which a response echoes."""

    class Status(models.TextChoices):
        IN_PROGRESS = "in_progress"
        COMPLETED = "completed"
        FAILED = "failed"
        # Cut short (a stream that ended early); its partial output is kept, never replayed.
        INCOMPLETE = "incomplete"

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="responses", db_index=False)
    public_id = models.CharField(max_length=64)
    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="responses")
    # The response this one continued (previous_response_id), kept while it exists.
    parent = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.IN_PROGRESS)
    model = models.CharField(max_length=200)
    first_message_id = models.BigIntegerField()
    output_message_id = models.BigIntegerField(null=True, blank=True)
    # The request's fields a response echoes (instructions, tools, text, metadata, …).
    request = models.JSONField(default=dict, blank=True)
    input_tokens = models.IntegerField(default=0)
    output_tokens = models.IntegerField(default=0)
    error_code = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # Serves every lookup by id: (key, public id) -> response.
            models.UniqueConstraint(fields=["api_key", "public_id"], name="chat_response_public_id_unique_per_key"),
            models.CheckConstraint(
                condition=models.Q(input_tokens__gte=0) & models.Q(output_tokens__gte=0),
                name="chat_response_tokens_not_negative",
            ),
        ]
        indexes = [
            # A session's responses, newest first: the one a conversation continues from.
            models.Index(F("session"), F("id").desc(), name="chat_response_session_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.status})"
