"""Requests sent with an Idempotency-Key, and the responses kept for them."""

from django.db import models
from django.utils import timezone

from chat.models.keys import ApiKey


class IdempotentRequest(models.Model):
    """A `POST /api/v1/chat` sent with an `Idempotency-Key` header, kept for a day: a retry with the
    same key gets the stored response instead of a second turn (Stripe's semantics).

    While the first request runs, `locked_until` is set and `response_status` is empty; requests
    with the same key wait for the response. A worker that crashed mid-turn leaves the row locked
    until `locked_until`, the longest a turn can take (270 s with the defaults; the key has no
    heartbeat of its own); then the next request with the key runs it again.
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
