"""Client keys, their audit trail, and the upstream credentials operators assign to them."""

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

# The largest limits a key may have: anything above is a typo, not a limit (and a larger budget
# would overflow the decimal columns it is compared with).
MAX_REQUESTS_PER_MINUTE = 1_000_000
MAX_TOKENS_PER_DAY = 10**15
MAX_MONTHLY_BUDGET_USD = Decimal(1_000_000_000)


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
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(MAX_REQUESTS_PER_MINUTE)]
    )
    tokens_per_day = models.PositiveBigIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(MAX_TOKENS_PER_DAY)]
    )
    # To the hundred-millionth of a dollar, as costs are: a budget of $0.001 is not "no budget".
    monthly_budget_usd = models.DecimalField(
        max_digits=20, decimal_places=8, null=True, blank=True, validators=[MaxValueValidator(MAX_MONTHLY_BUDGET_USD)]
    )
    # After a rotation with a grace period, the old secret keeps working until this time.
    previous_secret_hash = models.CharField(max_length=64, blank=True)
    previous_secret_valid_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "API key"
        constraints = [
            models.CheckConstraint(
                condition=(Q(requests_per_minute__isnull=True) | Q(requests_per_minute__lte=MAX_REQUESTS_PER_MINUTE))
                & (Q(tokens_per_day__isnull=True) | Q(tokens_per_day__lte=MAX_TOKENS_PER_DAY))
                & (
                    Q(monthly_budget_usd__isnull=True)
                    | Q(monthly_budget_usd__gte=0) & Q(monthly_budget_usd__lte=MAX_MONTHLY_BUDGET_USD)
                ),
                name="chat_apikey_limits_bounded",
            ),
        ]

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
