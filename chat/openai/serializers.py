"""OpenAI's chat completion request, as far as this server supports it, and its model object."""

from typing import Any

from django.conf import settings
from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from llmserver.http.fields import (
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    printable_name_field,
)

# `developer` is OpenAI's newer name for `system`.
SYSTEM_ROLES = ("system", "developer")
MESSAGE_ROLES = (*SYSTEM_ROLES, "user", "assistant")
MAX_STOP_SEQUENCES = 4


@extend_schema_field({
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": list(MESSAGE_ROLES)},
        "content": {"oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "object", "properties": {
                "type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}},
        ]},
    },
})
class MessageField(serializers.Field):
    """One chat message: a role and its text, given as a string or as a list of text parts."""

    default_error_messages = {
        "invalid": _("Each message is an object with 'role' and 'content'."),
        "role": _("A message's role is one of: system, developer, user, assistant (tool calls are not supported)."),
        "content": _("A message's content is a string or a list of text parts; images and audio are not supported."),
        "long": _("A message may have at most %(limit)d characters."),
    }

    def to_internal_value(self, data: Any) -> dict[str, str]:
        if not isinstance(data, dict) or "role" not in data or "content" not in data:
            self.fail("invalid")
        role, content = data["role"], data["content"]
        if role not in MESSAGE_ROLES:
            self.fail("role")
        if isinstance(content, list):
            if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                       for part in content):
                self.fail("content")
            content = "".join(part["text"] for part in content)
        if not isinstance(content, str):
            self.fail("content")
        if len(content) > settings.CHAT_MAX_MESSAGE_CHARS:
            # Not self.fail(): it fills placeholders with str.format, and this sentence's (as its
            # translation's) is %-style.
            raise serializers.ValidationError(
                self.error_messages["long"] % {"limit": settings.CHAT_MAX_MESSAGE_CHARS}, code="long"
            )
        return {"role": "system" if role in SYSTEM_ROLES else role, "content": content}

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field({"oneOf": [
    {"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP_SEQUENCES},
]})
class StopField(serializers.Field):
    default_error_messages = {"invalid": _("stop is a string or a list of at most 4 strings.")}

    def to_internal_value(self, data: Any) -> str | list[str]:
        if isinstance(data, str):
            return data
        if isinstance(data, list) and len(data) <= MAX_STOP_SEQUENCES and all(isinstance(s, str) for s in data):
            return data
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = StrictBooleanField(required=False, default=False)


class ChatCompletionRequestSerializer(serializers.Serializer):
    """OpenAI's chat completion request, as far as this server supports it. Parameters it does not
    support (tools, n > 1, response_format, logprobs, …) are refused by name rather than ignored."""

    model = printable_name_field(required=False, allow_blank=True, default="")
    messages = serializers.ListField(child=MessageField(), min_length=1, max_length=settings.CHAT_MAX_HISTORY_IMPORT)
    max_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=1_000_000)
    max_completion_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=1_000_000)
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=2.0)
    stream = StrictBooleanField(required=False, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    n = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=1)
    top_p = StrictFloatField(required=False, min_value=0.0, max_value=1.0)
    stop = StopField(required=False)
    presence_penalty = StrictFloatField(required=False, min_value=-2.0, max_value=2.0)
    frequency_penalty = StrictFloatField(required=False, min_value=-2.0, max_value=2.0)
    seed = StrictIntegerField(required=False)
    user = StrictCharField(required=False, max_length=256)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        """Refuses unsupported parameters together with any other field's error, all named."""
        unsupported = {
            name: [_("This server does not support this parameter.")]
            for name in sorted(set(data) - set(self.fields) if isinstance(data, dict) else ())
        }
        try:
            values = super().to_internal_value(data)
        except serializers.ValidationError as error:
            if isinstance(error.detail, dict):
                raise serializers.ValidationError({**error.detail, **unsupported}) from None
            raise
        if unsupported:
            raise serializers.ValidationError(unsupported)
        return values


class OpenAIModelSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    owned_by = serializers.CharField()
