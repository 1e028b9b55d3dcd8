"""Input and output shapes of the chat API. Validation only: no business rules here."""

import copy
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import RegexValidator
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from chat.models import ApiKey, Message, UsageRecord
from chat.sessions.content import MAX_IMAGES_PER_MESSAGE, ContentInvalid, ImageInput, image_input
from chat.sessions.ids import session_id_validator
from chat.turns.inputs import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE
from chat.turns.options import MAX_TOOLS, ResponseFormatField, ToolChoiceField, tools_field
from llmserver.http.fields import (
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    printable_name_field,
)

HISTORY_ROLES = ("user", "assistant", "system")
UPSTREAM_KEY_HEADER = "X-Upstream-Api-Key"
UPSTREAM_KEY_MAX_LENGTH = 512
upstream_key_validator = RegexValidator(
    r"^[\x21-\x7e]*$", _("An upstream API key is printable ASCII without spaces."), code="invalid_upstream_key"
)


def _session_id_field(**kwargs: Any) -> StrictCharField:
    return StrictCharField(max_length=128, validators=[session_id_validator], **kwargs)


class MemoryFactsField(serializers.ListField):
    """Memory facts, each trimmed; one that trims to nothing says nothing, and is left out rather
    than refused (what counts as whitespace differs between regular expression engines, so no
    schema could say which facts would be refused)."""

    def to_internal_value(self, data: Any) -> list[str]:
        return [fact for fact in super().to_internal_value(data) if fact]


def _memory_field(**kwargs: Any) -> serializers.ListField:
    return MemoryFactsField(
        child=StrictCharField(max_length=2000, allow_blank=True),
        max_length=settings.CHAT_MAX_MEMORY_FACTS,
        help_text=(
            "Facts to remember, sent every turn as one system message ('Memory:' then one fact per line). "
            "Blank facts are left out."
        ),
        **kwargs,
    )




@extend_schema_field({"type": "object", "required": ["tool_call_id", "content"], "properties": {
    "tool_call_id": {"type": "string", "minLength": 1, "maxLength": 128}, "content": {"type": "string"},
}})
class ToolResultField(serializers.Field):
    """`{"tool_call_id", "content"}`. A field, not a nested serializer: every chat request builds its
    serializer's fields, and a nested one cost a tenth of the validation of a plain message."""

    def to_internal_value(self, data: Any) -> dict[str, str]:
        if not (
            isinstance(data, dict) and set(data) == {"tool_call_id", "content"}
            and isinstance(data["tool_call_id"], str) and 0 < len(data["tool_call_id"]) <= 128
            and isinstance(data["content"], str) and len(data["content"]) <= settings.CHAT_MAX_MESSAGE_CHARS
        ):
            raise serializers.ValidationError(_(
                "Each tool result is an object with tool_call_id (the id of the call it answers, at most 128 "
                "characters) and content (the result as a string)."
            ), code="invalid")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


TOOL_AND_IMAGE_FIELDS = ("images", "tool_results", "tools", "tool_choice", "response_format")


class ChatRequestSerializer(serializers.Serializer):
    """`POST /api/v1/chat`: the original ChatRequest contract."""

    session_id = _session_id_field(
        required=False, allow_blank=True, default="",
        help_text="The conversation to continue, scoped to your key. Empty: the server starts a new one.",
    )
    user_message = StrictCharField(
        required=False,
        max_length=settings.CHAT_MAX_MESSAGE_CHARS,
        trim_whitespace=False,
        error_messages={"blank": _("user message cannot be empty")},
        help_text="The new message. Required, unless tool_results answer the last answer's tool calls instead.",
    )
    images = serializers.ListField(
        # No length of its own: the request's size bounds it, and image_input says what is too large.
        child=StrictCharField(), required=False, default=list,
        max_length=MAX_IMAGES_PER_MESSAGE,
        help_text="Images sent with user_message: http(s) URLs or data URLs (data:image/png;base64,...).",
    )
    tool_results = serializers.ListField(
        child=ToolResultField(), required=False, default=list, max_length=MAX_TOOLS,
        help_text="Instead of user_message: one result for each tool call of the session's last answer.",
    )
    tools = tools_field(required=False, default=list, help_text="Tools the model may call (OpenAI's format).")
    tool_choice = ToolChoiceField(required=False)
    response_format = ResponseFormatField(required=False)
    role = StrictCharField(
        required=False, allow_blank=True, default="", trim_whitespace=False, max_length=20_000,
        help_text="Persona / system prompt; stored on the session and sent first every turn.",
    )
    max_tokens = StrictIntegerField(required=False, default=DEFAULT_MAX_TOKENS, min_value=1, max_value=1_000_000)
    temperature = StrictFloatField(required=False, default=DEFAULT_TEMPERATURE, min_value=0.0, max_value=2.0)
    model = printable_name_field(required=False, allow_blank=True, default="")
    memory_context = _memory_field(required=False, default=list)
    conversation_history = serializers.ListField(
        child=StrictCharField(trim_whitespace=False, max_length=settings.CHAT_MAX_MESSAGE_CHARS),
        required=False,
        default=list,
        max_length=settings.CHAT_MAX_HISTORY_IMPORT,
        help_text=(
            "Earlier turns as 'role:content' strings (role is user, assistant or system). Imported only "
            "into a session with no stored messages; otherwise ignored, with a warning."
        ),
    )

    api_key = StrictCharField(
        required=False, allow_blank=True, default="", write_only=True, max_length=UPSTREAM_KEY_MAX_LENGTH,
        validators=[upstream_key_validator],
        help_text=(
            "Your own upstream (e.g. OpenAI) key, for this request only; never stored. The header "
            "X-Upstream-Api-Key does the same."
        ),
    )
    free_mode = StrictBooleanField(
        required=False, default=False,
        help_text="With your own key: check it first and fall back to the server's key if it is not accepted.",
    )
    stream = StrictBooleanField(
        required=False, default=False,
        help_text=(
            "Answer as server-sent events (text/event-stream): `delta` events with {\"delta\": \"...\"}, "
            "then one `done` event with this endpoint's JSON response, or one `error` event in the error shape."
        ),
    )

    def get_fields(self) -> dict[str, serializers.Field]:
        """Only the tool and image fields a request sends are built: every chat request builds its
        fields, and these five, absent from nearly all of them, cost a quarter of the validation."""
        data = getattr(self, "initial_data", None)
        absent = {name for name in TOOL_AND_IMAGE_FIELDS if name not in data} if isinstance(data, dict) else set()
        return {name: copy.deepcopy(field) for name, field in self._declared_fields.items() if name not in absent}

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Resolve the caller's upstream key from the header (passed in the context) or the body."""
        header_key = self.context.get("upstream_key_header", "")
        if header_key:
            if len(header_key) > UPSTREAM_KEY_MAX_LENGTH:
                raise serializers.ValidationError({UPSTREAM_KEY_HEADER: [_("The upstream API key is too long.")]})
            try:
                upstream_key_validator(header_key)
            except DjangoValidationError as error:
                raise serializers.ValidationError({UPSTREAM_KEY_HEADER: list(error.messages)}) from None
        if header_key and attrs["api_key"] and header_key != attrs["api_key"]:
            raise serializers.ValidationError(
                {"api_key": [_("Send your upstream key in X-Upstream-Api-Key or in api_key, not two different ones.")]}
            )
        attrs["upstream_key"] = header_key or attrs.pop("api_key")
        for name, empty in (("images", []), ("tool_results", []), ("tools", [])):
            attrs.setdefault(name, empty)
        if attrs["tool_results"] and ("user_message" in attrs or attrs["images"]):
            raise serializers.ValidationError(
                {"tool_results": [_("Send either user_message (with images) or tool_results, not both.")]}
            )
        if not attrs["tool_results"] and "user_message" not in attrs:
            raise serializers.ValidationError({"user_message": [_("user_message is required.")]})
        return attrs

    def validate_user_message(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError(_("user message cannot be empty"), code="blank")
        return value

    def validate_images(self, value: list[str]) -> list[ImageInput]:
        checked = []
        for index, url in enumerate(value):
            try:
                checked.append(image_input(url))
            except ContentInvalid as error:
                raise serializers.ValidationError(
                    _("Image %(index)d: %(reason)s") % {"index": index, "reason": error}
                ) from None
        return checked

    def validate_conversation_history(self, value: list[str]) -> list[tuple[str, str]]:
        turns = []
        for index, entry in enumerate(value):
            role, separator, content = entry.partition(":")
            role = role.strip().lower()
            if not separator or role not in HISTORY_ROLES or not content.strip():
                raise serializers.ValidationError(
                    _("Entry %(index)d is not 'role:content' with role user, assistant or system.") % {"index": index}
                )
            turns.append((role, content.strip()))
        return turns


class ChatResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField(default=True)
    session_id = serializers.CharField()
    message_id = serializers.IntegerField(help_text="The stored assistant message.")
    user_message_id = serializers.IntegerField(help_text="The stored user message.")
    response_text = serializers.CharField()
    model = serializers.CharField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens_used = serializers.IntegerField()
    response_time = serializers.FloatField(help_text="Seconds from request to answer.")
    key_source = serializers.ChoiceField(choices=["default", "user_provided"])
    finish_reason = serializers.CharField(
        allow_null=True, help_text="stop, length, tool_calls (answer the calls with tool_results), …"
    )
    tool_calls = serializers.ListField(
        child=serializers.DictField(),
        help_text='The tool calls of the answer: [{"id", "type", "function": {"name", "arguments"}}].',
    )
    warnings = serializers.ListField(child=serializers.CharField())
    error_message = serializers.CharField(allow_null=True, default=None)


class SessionCreateSerializer(serializers.Serializer):
    session_id = _session_id_field(required=False, allow_blank=True, default="")
    title = StrictCharField(required=False, allow_blank=True, default="", max_length=200)
    role = StrictCharField(required=False, allow_blank=True, default="", trim_whitespace=False, max_length=20_000)
    model = printable_name_field(required=False, allow_blank=True, default="")
    memory_context = _memory_field(required=False, default=list)


class SessionUpdateSerializer(serializers.Serializer):
    """PATCH: only the fields sent change; `memory_context` replaces the stored facts."""

    title = StrictCharField(required=False, allow_blank=True, max_length=200)
    role = StrictCharField(required=False, allow_blank=True, trim_whitespace=False, max_length=20_000)
    model = printable_name_field(required=False, allow_blank=True)
    memory_context = _memory_field(required=False)


class SessionSerializer(serializers.Serializer):
    session_id = serializers.CharField(source="public_id")
    title = serializers.CharField()
    role = serializers.CharField(source="system_prompt")
    model = serializers.CharField()
    memory_context = serializers.ListField(child=serializers.CharField(), source="memory_facts")
    prompt_tokens = serializers.IntegerField(source="prompt_tokens_total")
    completion_tokens = serializers.IntegerField(source="completion_tokens_total")
    total_tokens = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class MessageSerializer(serializers.Serializer):
    message_id = serializers.IntegerField(source="pk")
    role = serializers.ChoiceField(choices=Message.Role.choices)
    content = serializers.CharField()
    parts = serializers.SerializerMethodField(
        help_text="The message's texts and images in order, when it has images or several texts; images as "
        '{"type": "image", "url", "media_type", "detail", "width", "height"} with a URL this key can fetch, '
        'or {"type": "image_url", "url", "detail"} as sent.'
    )
    tool_calls = serializers.ListField(child=serializers.DictField(), allow_null=True)
    tool_call_id = serializers.CharField()
    name = serializers.CharField()
    status = serializers.ChoiceField(choices=Message.Status.choices)
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    model = serializers.CharField()
    latency_ms = serializers.IntegerField(allow_null=True)
    error_code = serializers.CharField()
    created_at = serializers.DateTimeField()

    @extend_schema_field({"type": "array", "nullable": True, "items": {"type": "object"}})
    def get_parts(self, message: Message) -> list[dict[str, Any]] | None:
        if message.parts is None:
            return None
        return [
            {**part, "url": reverse("image", kwargs={"sha256": part["sha256"]})} if part["type"] == "image" else part
            for part in message.parts
        ]


class UsageRecordSerializer(serializers.Serializer):
    """One upstream call and what it cost."""

    model = serializers.CharField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    usage_estimated = serializers.BooleanField(help_text="True when upstream reported no usage and the server counted.")
    key_source = serializers.ChoiceField(choices=UsageRecord.KeySource.choices)
    outcome = serializers.ChoiceField(
        choices=UsageRecord.Outcome.choices,
        help_text="in_flight while the call is under way; interrupted when its server process went away first.",
    )
    error_code = serializers.CharField()
    latency_ms = serializers.IntegerField()
    request_id = serializers.CharField(help_text="The X-Request-Id of the request that made the call.")
    created_at = serializers.DateTimeField()


class ApiKeySerializer(serializers.Serializer):
    """A key as lists show it: its id and last characters, never the secret or its hash."""

    key_id = serializers.CharField()
    key = serializers.CharField(source="masked")
    name = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    allowed_models = serializers.ListField(child=serializers.CharField())
    status = serializers.ChoiceField(choices=ApiKey.Status.choices)
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    total_tokens = serializers.IntegerField()
    created_at = serializers.DateTimeField()


USAGE_DEFAULT_DAYS = 30
USAGE_MAX_DAYS = 366


class UsageQuerySerializer(serializers.Serializer):
    """`GET /api/v1/usage?from=YYYY-MM-DD&to=YYYY-MM-DD&group_by=day|model|key[&key=KEY_ID]`."""

    to = serializers.DateField(required=False, help_text="Last day (UTC), inclusive. Default: today.")
    group_by = serializers.ChoiceField(choices=["day", "model", "key"], default="day")
    key = serializers.CharField(required=False, max_length=16, help_text="A key id (admin keys only).")

    def get_fields(self) -> dict[str, serializers.Field]:
        # `from` is a Python keyword, so it cannot be declared as a class attribute.
        fields = super().get_fields()
        fields["from"] = serializers.DateField(
            required=False,
            help_text=f"First day (UTC), inclusive. Default: {USAGE_DEFAULT_DAYS - 1} days before `to`. "
            f"A report covers at most {USAGE_MAX_DAYS} days: a longer period is a 400.",
        )
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # DRF reads an empty query parameter as one not sent; `?to=` is a mistake, not "today".
        empty = sorted(name for name in self.fields if self.initial_data.get(name) == "")
        if empty:
            sentence = _("Send a value, or leave the parameter out.")
            raise serializers.ValidationError({name: [sentence] for name in empty})
        day_to = attrs.get("to") or datetime.now(dt_timezone.utc).date()
        try:
            day_from = attrs.get("from") or day_to - timedelta(days=USAGE_DEFAULT_DAYS - 1)
        except OverflowError:
            # 'to' in the first days of the year 1: the default 'from' would be before it.
            raise serializers.ValidationError(
                {"from": [_("'to' is too early for the default period; send 'from' as well.")]}
            ) from None
        if day_from > day_to:
            raise serializers.ValidationError({"from": [_("'from' must not be after 'to'.")]})
        if (day_to - day_from).days >= USAGE_MAX_DAYS:
            raise serializers.ValidationError(
                {"from": [_("A report covers at most %(days)d days.") % {"days": USAGE_MAX_DAYS}]}
            )
        return {**attrs, "from": day_from, "to": day_to}


class UsageTotalsSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=20, decimal_places=8, help_text="USD, as a string.")


class UsageGroupSerializer(UsageTotalsSerializer):
    day = serializers.DateField(required=False)
    model = serializers.CharField(required=False)
    key_id = serializers.CharField(required=False, source="api_key__key_id")
    name = serializers.CharField(required=False, source="api_key__name")


class UsageReportSerializer(serializers.Serializer):
    def get_fields(self) -> dict[str, serializers.Field]:
        return {
            "from": serializers.DateField(),
            "to": serializers.DateField(),
            "group_by": serializers.CharField(),
            "totals": UsageTotalsSerializer(),
            "groups": UsageGroupSerializer(many=True),
        }
