"""Sessions (conversations) and their messages."""

from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from chat.models.keys import ApiKey


class ChatSession(models.Model):
    """One conversation of one client key. `public_id` is the id clients use, unique per key."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="sessions")
    public_id = models.CharField(max_length=128)
    title = models.CharField(max_length=200, blank=True)
    # The persona (the original contract's `role`), sent as the first system message.
    system_prompt = models.TextField(blank=True)
    model = models.CharField(max_length=200)
    # Pinned memory facts, sent as one "Memory:" system message on every turn.
    memory_facts = models.JSONField(default=list, blank=True)
    # A client's own key-value pairs (the Conversations API's `metadata`).
    metadata = models.JSONField(default=dict, blank=True)
    prompt_tokens_total = models.BigIntegerField(default=0)
    completion_tokens_total = models.BigIntegerField(default=0)
    # The turn lease (chat/sessions/lease.py). Set while a turn waits on upstream: a second turn on
    # the session is refused with 409 until it is cleared. `turn_started_at` identifies the turn
    # holding it (only that turn's end releases it); `turn_heartbeat_at` is renewed while the turn
    # runs, so that a lease whose holder died is free within CHAT_TURN_LEASE_SECONDS.
    turn_started_at = models.DateTimeField(null=True, blank=True)
    turn_heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # Serves the lookup on every turn: (key, public id) -> session.
            models.UniqueConstraint(fields=["api_key", "public_id"], name="chat_session_public_id_unique_per_key"),
            models.CheckConstraint(
                condition=Q(prompt_tokens_total__gte=0) & Q(completion_tokens_total__gte=0),
                name="chat_session_token_totals_not_negative",
            ),
        ]
        indexes = [
            # GET /api/v1/sessions: one key's sessions, newest first.
            models.Index(F("api_key"), F("created_at").desc(), F("id").desc(), name="chat_session_list_idx"),
        ]

    def __str__(self) -> str:
        return self.title or self.public_id

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens_total + self.completion_tokens_total



class Message(models.Model):
    """One message of a session, with what it cost when it was an upstream answer."""

    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"
        # A tool's result, answering one of the tool calls of the assistant message before it.
        TOOL = "tool"

    class Status(models.TextChoices):
        # A user message whose turn is still waiting on upstream; never replayed.
        PENDING = "pending"
        COMPLETE = "complete"
        # The turn failed: kept for the record, never replayed.
        FAILED = "failed"
        # An answer cut short (a stream that ended early); never replayed.
        INCOMPLETE = "incomplete"

    # No separate FK index: both composite indexes below start with the session.
    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="messages", db_index=False)
    role = models.CharField(max_length=16, choices=Role.choices)
    # The text. When the message has content parts (`parts`), their texts joined by a blank line, for
    # listing and search; the parts are what is replayed.
    content = models.TextField()
    # Content parts, when the message is more than one text (chat/sessions/content.py says their
    # stored shape): texts and images, in order. Images are references to StoredImage by hash,
    # never their bytes. Null for a plain text message (every message stored before tools existed).
    parts = models.JSONField(null=True, blank=True)
    # An assistant message's tool calls, as OpenAI's wire format has them:
    # [{"id", "type": "function", "function": {"name", "arguments"}}]. Null when it made none.
    tool_calls = models.JSONField(null=True, blank=True)
    # A tool message: the id of the call it answers.
    tool_call_id = models.CharField(max_length=128, blank=True)
    # The participant's name, as a client gave it (OpenAI's `name` on a message).
    name = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    # The message's size in the prompt (content, role and per-message overhead) in `token_encoding`,
    # counted once when stored so that building the prompt does not re-tokenize the history.
    token_count = models.IntegerField(default=0)
    token_encoding = models.CharField(max_length=32, blank=True)
    # For an assistant message: the usage of the upstream call that produced it.
    prompt_tokens = models.IntegerField(default=0)
    completion_tokens = models.IntegerField(default=0)
    model = models.CharField(max_length=200, blank=True)
    latency_ms = models.IntegerField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(token_count__gte=0) & Q(prompt_tokens__gte=0) & Q(completion_tokens__gte=0),
                name="chat_message_tokens_not_negative",
            ),
            # A tool result answers a call; only a tool result says which.
            models.CheckConstraint(
                condition=(Q(role="tool") & ~Q(tool_call_id="")) | (~Q(role="tool") & Q(tool_call_id="")),
                name="chat_message_tool_result_names_its_call",
            ),
        ]
        indexes = [
            # Every turn: the newest complete messages of one session, read newest first until the
            # context budget is full.
            models.Index(F("session"), F("status"), F("id").desc(), name="chat_message_history_idx"),
            # GET /api/v1/sessions/{id}/messages: one session's messages, oldest first.
            models.Index(fields=["session", "id"], name="chat_message_list_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.role} message {self.pk} ({self.status})"


class StoredImage(models.Model):
    """An image a key sent in a message, stored once by its content (SHA-256) however many messages
    refer to it. Per key, so that one key can never learn whether another sent an image, and so
    that the image URL a key is shown is one only that key can fetch."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="images", db_index=False)
    sha256 = models.CharField(max_length=64)
    media_type = models.CharField(max_length=32)
    data = models.BinaryField()
    byte_size = models.IntegerField()
    width = models.IntegerField()
    height = models.IntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # Serves storing (is it there already?) and fetching one image: (key, hash) -> image.
            models.UniqueConstraint(fields=["api_key", "sha256"], name="chat_image_unique_per_key"),
            models.CheckConstraint(
                condition=Q(byte_size__gt=0) & Q(width__gt=0) & Q(height__gt=0), name="chat_image_size_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.media_type} image {self.sha256[:12]} ({self.width}x{self.height})"
