"""What every upstream call cost: its record, the daily roll-ups, the price table, and the counters
of the keys' limits."""

from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from chat.models.keys import ApiKey
from chat.models.sessions import ChatSession


class UsageRecord(models.Model):
    """One upstream call: what it cost and how it ended. Kept when its session is deleted."""

    class KeySource(models.TextChoices):
        DEFAULT = "default"
        USER_PROVIDED = "user_provided"

    class Outcome(models.TextChoices):
        # Written before the call is made (the turn's first step), closed by the turn's end.
        IN_FLIGHT = "in_flight"
        SUCCESS = "success"
        FAILED = "failed"
        PARTIAL = "partial"
        # The process making the call went away (a restart, a crash, a lost database) before it
        # could close the record: the sweep closed it, with the tokens known by then.
        INTERRUPTED = "interrupted"

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
    # While the call is in flight: renewed by the turn, so that the sweep knows the record's
    # process is gone once it is older than CHAT_TURN_LEASE_SECONDS.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The turn's question (a Message id; none for a stateless call), for the sweep to mark failed.
    # Not a foreign key: deleting a session's messages must not have to update the usage table.
    user_message_id = models.BigIntegerField(null=True, blank=True)
    # What the turn reserved against the key's limits (chat/usage/limits.py), for whoever closes
    # the record to settle: [[limit, window start (ISO 8601), amount], ...].
    reservations = models.JSONField(default=list, blank=True)
    # The X-Request-Id of the request that made the call (also in the log lines written for it, and
    # sent upstream with the call): what ties a record to the logs, here and at the provider.
    request_id = models.CharField(max_length=128, blank=True)

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
            # The sweep: calls in flight whose heartbeat stopped (few, and only those are indexed).
            models.Index(fields=["heartbeat_at"], condition=Q(outcome="in_flight"), name="chat_usage_in_flight_idx"),
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
