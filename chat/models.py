"""What the chat server stores: client keys, sessions, their messages, and usage per upstream call.

Integrity lives here, in named constraints the database enforces; behaviour lives in each domain's
services (writes) and selectors (reads): chat/keys, chat/sessions, chat/turns, chat/usage, chat/upstreams.
"""

from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone


class UpstreamCredential(models.Model):
    """An upstream API key (and optionally its own base URL) that operators assign to client keys.

    The key is stored only encrypted (chat/upstreams/crypto.py); `api_key_last4` tells credentials apart.
    """

    name = models.CharField(max_length=100, unique=True)
    # Empty: the server's OPENAI_BASE_URL (or OpenAI's own API when that is empty too).
    base_url = models.URLField(blank=True)
    api_key_encrypted = models.TextField()
    api_key_last4 = models.CharField(max_length=4)
    # The models this upstream serves; the first is the default. Empty: any model.
    served_models = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.name} (…{self.api_key_last4})"


def default_scopes() -> list[str]:
    return [ApiKey.Scope.CHAT]


class ApiKey(models.Model):
    """A client application's key. Only a keyed hash of the secret is stored (see chat/keys/key_format.py)."""

    class Scope(models.TextChoices):
        # Chat, and read and change its own sessions and usage.
        CHAT = "chat"
        # Read its own sessions, messages and usage; nothing else.
        READ = "read"
        # Monitoring, everyone's usage, key management over the API.
        ADMIN = "admin"

    class Status(models.TextChoices):
        ACTIVE = "active"
        REVOKED = "revoked"
        EXPIRED = "expired"

    name = models.CharField(max_length=100)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="api_keys"
    )
    # The public part of the key (`llms_<key_id>_...`): it finds the row, the hash proves the secret.
    # Rotation keeps it, so that sessions, usage and limits stay with the key.
    key_id = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    # The key's last characters, so that operators can tell keys apart without seeing them.
    last4 = models.CharField(max_length=4)
    scopes = models.JSONField(default=default_scopes)
    # Model names this key may use. Empty: every model.
    allowed_models = models.JSONField(default=list, blank=True)
    upstream_credential = models.ForeignKey(
        UpstreamCredential, on_delete=models.PROTECT, null=True, blank=True, related_name="api_keys"
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Refreshed at most every API_KEY_LAST_USED_INTERVAL_SECONDS, not on every request.
    last_used_at = models.DateTimeField(null=True, blank=True)
    # Limits of this key; empty uses the server default (LIMIT_* settings), 0 means unlimited.
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_day = models.PositiveBigIntegerField(null=True, blank=True)
    monthly_budget_usd = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    # After a rotation with a grace period, the old secret keeps working until this time.
    previous_secret_hash = models.CharField(max_length=64, blank=True)
    previous_secret_valid_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.key_id}…{self.last4})"

    def status_at(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return self.Status.REVOKED
        if self.expires_at is not None and self.expires_at <= now:
            return self.Status.EXPIRED
        return self.Status.ACTIVE

    @property
    def status(self) -> str:
        return self.status_at(timezone.now())

    @property
    def masked(self) -> str:
        """How lists show a key: its id and last characters, never the secret."""
        return f"llms_{self.key_id}_…{self.last4}"


class ApiKeyEvent(models.Model):
    """Audit: who created, changed, revoked or rotated a key, and when."""

    class Action(models.TextChoices):
        CREATED = "created"
        UPDATED = "updated"
        REVOKED = "revoked"
        ROTATED = "rotated"

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="events", db_index=False)
    action = models.CharField(max_length=16, choices=Action.choices)
    # "command" for manage.py, "admin:<username>" for the admin.
    actor = models.CharField(max_length=150)
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            # The key's history in the admin, oldest first.
            models.Index(fields=["api_key", "created_at"], name="chat_apikeyevent_history_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor}"


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
    prompt_tokens_total = models.BigIntegerField(default=0)
    completion_tokens_total = models.BigIntegerField(default=0)
    # Set while a turn waits on upstream: a second turn on the session is refused with 409 until it
    # is cleared, or until it is older than the turn lease (a crashed worker cannot lock it forever).
    turn_started_at = models.DateTimeField(null=True, blank=True)
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
    content = models.TextField()
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


class UsageRecord(models.Model):
    """One upstream call: what it cost and how it ended. Kept when its session is deleted."""

    class KeySource(models.TextChoices):
        DEFAULT = "default"
        USER_PROVIDED = "user_provided"

    class Outcome(models.TextChoices):
        SUCCESS = "success"
        FAILED = "failed"
        PARTIAL = "partial"

    api_key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="usage_records", db_index=False)
    session = models.ForeignKey(ChatSession, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    model = models.CharField(max_length=200)
    prompt_tokens = models.IntegerField(default=0)
    completion_tokens = models.IntegerField(default=0)
    total_tokens = models.IntegerField(default=0)
    # True when upstream reported no usage and the counts are our own tokenizer's.
    usage_estimated = models.BooleanField(default=False)
    # In USD, from the model's price at the time of the call (ModelPrice); 0 for unknown models.
    cost = models.DecimalField(max_digits=16, decimal_places=8, default=0)
    key_source = models.CharField(max_length=16, choices=KeySource.choices, default=KeySource.DEFAULT)
    latency_ms = models.IntegerField(default=0)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    error_code = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(prompt_tokens__gte=0) & Q(completion_tokens__gte=0) & Q(latency_ms__gte=0) & Q(cost__gte=0),
                name="chat_usage_tokens_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(total_tokens=F("prompt_tokens") + F("completion_tokens")),
                name="chat_usage_total_is_sum",
            ),
        ]
        indexes = [
            # Usage of one key over a period (reports, limits).
            models.Index(fields=["api_key", "created_at"], name="chat_usage_key_time_idx"),
            # The dashboard's recent failures: only calls that did not succeed (few), newest first.
            models.Index(
                fields=["-created_at"], condition=~Q(outcome="success"), name="chat_usage_failures_recent_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model}: {self.total_tokens} tokens ({self.outcome})"


class ModelPrice(models.Model):
    """What a model costs, in USD per million tokens, matched to model names by longest prefix.

    Known OpenAI prices ship as data (migration 0004); operators edit them in the admin. A price
    applies to calls recorded after it changes: recorded costs are never rewritten.
    """

    model_prefix = models.CharField(max_length=200, unique=True)
    input_per_million = models.DecimalField(max_digits=12, decimal_places=6)
    output_per_million = models.DecimalField(max_digits=12, decimal_places=6)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(input_per_million__gte=0) & Q(output_per_million__gte=0),
                name="chat_modelprice_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_prefix}: ${self.input_per_million} in / ${self.output_per_million} out per 1M tokens"


class UsageCounts(models.Model):
    """What a roll-up adds up: calls, tokens and cost."""

    requests = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(max_digits=20, decimal_places=8, default=0)

    class Meta:
        abstract = True


class UsageDaily(UsageCounts):
    """Usage per (key, model, UTC day), moved in the same transaction as each usage record, so
    that reports read a few rows per day instead of every call."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="usage_days", db_index=False)
    model = models.CharField(max_length=200)
    day = models.DateField()

    class Meta:
        verbose_name_plural = "usage by day"
        constraints = [
            # The roll-up's identity; also serves "one key's usage over a period, by model".
            models.UniqueConstraint(fields=["api_key", "day", "model"], name="chat_usagedaily_key_day_model_unique"),
            models.CheckConstraint(
                condition=Q(requests__gte=0) & Q(prompt_tokens__gte=0) & Q(completion_tokens__gte=0)
                & Q(total_tokens=F("prompt_tokens") + F("completion_tokens")) & Q(cost__gte=0),
                name="chat_usagedaily_counts_consistent",
            ),
        ]
        indexes = [
            # Usage of all keys over a period (admin reports, GET /api/v1/usage with an admin key).
            models.Index(fields=["day"], name="chat_usagedaily_day_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.model}: {self.total_tokens} tokens"


class UsageDailyTotal(UsageCounts):
    """Usage of all keys per (model, UTC day): the all-keys reports read a few hundred of these
    instead of every key's roll-up (1,000 keys × 90 days × a few models is ~350,000 rows).
    Moved in the same transaction as UsageDaily."""

    model = models.CharField(max_length=200)
    day = models.DateField()

    class Meta:
        verbose_name_plural = "usage by day, all keys"
        constraints = [
            # The roll-up's identity; also serves "all keys over a period" (a range of days).
            models.UniqueConstraint(fields=["day", "model"], name="chat_usagedailytotal_day_model_unique"),
            models.CheckConstraint(
                condition=Q(requests__gte=0) & Q(prompt_tokens__gte=0) & Q(completion_tokens__gte=0)
                & Q(total_tokens=F("prompt_tokens") + F("completion_tokens")) & Q(cost__gte=0),
                name="chat_usagedailytotal_counts_consistent",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.model}: {self.total_tokens} tokens (all keys)"


class LimitCounter(models.Model):
    """What one key has used of one limit in one fixed window (a minute, a UTC day, a UTC month).

    Every worker process shares it through the database: a turn reserves its worst case with a
    conditional UPDATE (`used + amount <= limit`), which the database applies atomically, so
    concurrent requests cannot overshoot; the turn's end settles the reservation to what it used.
    """

    class Limit(models.TextChoices):
        REQUESTS_PER_MINUTE = "requests_per_minute"
        TOKENS_PER_DAY = "tokens_per_day"
        MONTHLY_BUDGET = "monthly_budget"

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="limit_counters", db_index=False)
    limit = models.CharField(max_length=32, choices=Limit.choices)
    window_start = models.DateTimeField()
    # Requests, tokens or USD, by limit.
    used = models.DecimalField(max_digits=20, decimal_places=8, default=0)

    class Meta:
        constraints = [
            # Serves the reservation on every turn: (key, limit, window) -> counter.
            models.UniqueConstraint(
                fields=["api_key", "limit", "window_start"], name="chat_limitcounter_unique_window"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.limit} from {self.window_start}: {self.used}"


class IdempotentRequest(models.Model):
    """A `POST /api/v1/chat` sent with an `Idempotency-Key` header, kept for a day: a retry with the
    same key gets the stored response instead of a second turn (Stripe's semantics).

    While the first request runs, `locked_until` is set and `response_status` is empty; requests
    with the same key wait for the response. A worker that crashed mid-turn leaves the row locked
    only until the turn lease runs out; then the next request with the key runs it again.
    """

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="+", db_index=False)
    key = models.CharField(max_length=255)
    # SHA-256 of the request body (canonical JSON): the same key with another body is refused.
    request_hash = models.CharField(max_length=64)
    locked_until = models.DateTimeField(null=True, blank=True)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    # JSON text rather than a JSONField: PostgreSQL's jsonb reorders keys, and a replay should be
    # the same response, byte for byte.
    response_body = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # Serves the lookup on every request with the header; keys are scoped to the client key.
            models.UniqueConstraint(fields=["api_key", "key"], name="chat_idempotency_key_unique_per_key"),
        ]
        indexes = [
            # prune_idempotency_keys: rows older than a day.
            models.Index(fields=["created_at"], name="chat_idempotency_expiry_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.response_status or 'running'})"
