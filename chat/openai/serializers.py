"""OpenAI's chat completion request, as far as this server supports it, and its model object."""

import copy
from typing import Any

from django.conf import settings
from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from chat.sessions.content import (
    MAX_IMAGES_PER_MESSAGE,
    ContentInvalid,
    ContentPart,
    ImageInput,
    image_input,
    parts_text,
)
from chat.turns.inputs import NewMessage
from chat.turns.options import ResponseFormatField, ToolChoiceField, tools_field
from llmserver.http.fields import (
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    printable_name_field,
)

# `developer` is OpenAI's newer name for `system`.
SYSTEM_ROLES = ("system", "developer")
MESSAGE_ROLES = (*SYSTEM_ROLES, "user", "assistant", "tool")
MAX_STOP_SEQUENCES = 4
# What a message may carry besides its role and content. The SDKs send an answer's message back as
# it came, with OpenAI's output-only fields (refusal, annotations, audio): those are accepted when
# empty, and not kept.
MESSAGE_FIELDS = {"role", "content", "name", "tool_calls", "tool_call_id"}
IGNORED_WHEN_EMPTY = {"refusal", "annotations", "audio", "function_call"}
MAX_NAME_LENGTH = 64


@extend_schema_field({
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": list(MESSAGE_ROLES)},
        "content": {"oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "object", "properties": {
                "type": {"type": "string", "enum": ["text", "image_url"]}, "text": {"type": "string"},
                "image_url": {"type": "object", "properties": {
                    "url": {"type": "string"}, "detail": {"type": "string", "enum": ["auto", "low", "high"]}}}}}},
        ], "nullable": True},
        "name": {"type": "string"},
        "tool_calls": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "string"}, "type": {"type": "string", "enum": ["function"]},
            "function": {"type": "object", "properties": {
                "name": {"type": "string"}, "arguments": {"type": "string"}}}}}},
        "tool_call_id": {"type": "string"},
    },
})
class MessageField(serializers.Field):
    """One chat message in OpenAI's format: a system (developer), user, assistant or tool message,
    its content a string or a list of parts (texts; images in a user's message), an assistant's
    tool calls, a tool result's call id. Checked into a NewMessage (chat/turns/steps.py)."""

    default_error_messages = {
        "invalid": _("Each message is an object with 'role' and 'content'."),
        "role": _("A message's role is one of: system, developer, user, assistant, tool."),
        "content": _(
            "A message's content is a string or a list of parts: text parts, and in a user's message image_url "
            "parts; audio and files are not supported."
        ),
        "long": _("A message may have at most %(limit)d characters."),
        "fields": _("A message has no field %(fields)s."),
        "tool_calls": _(
            "An assistant message's tool_calls are a list of calls, each with an id, type \"function\" and a "
            "function with a name and arguments (strings)."
        ),
        "tool_call_id": _("A tool message needs the tool_call_id of the call it answers; no other message has one."),
        "name": _("A message's name is a string of at most 64 printable characters."),
        "images": _("A message may carry at most %(limit)d images."),
    }

    def _error(self, key: str, **values: Any) -> serializers.ValidationError:
        # Not self.fail(): it fills placeholders with str.format, and these sentences (as their
        # translations) are %-style or show JSON quotes.
        message = self.error_messages[key]
        return serializers.ValidationError(message % values if values else message, code=key)

    def to_internal_value(self, data: Any) -> NewMessage:
        if not isinstance(data, dict) or "role" not in data:
            raise self._error("invalid")
        role = data["role"]
        if role not in MESSAGE_ROLES:
            raise self._error("role")
        unknown = sorted(
            name for name in set(data) - MESSAGE_FIELDS if not (name in IGNORED_WHEN_EMPTY and not data[name])
        )
        if unknown:
            raise self._error("fields", fields=", ".join(unknown))
        tool_calls = self._tool_calls(data.get("tool_calls")) if role == "assistant" else None
        if role != "assistant" and data.get("tool_calls"):
            raise self._error("tool_calls")
        tool_call_id = data.get("tool_call_id") or ""
        if (role == "tool") != bool(tool_call_id) or not isinstance(tool_call_id, str) or len(tool_call_id) > 128:
            raise self._error("tool_call_id")
        name = data.get("name") or ""
        if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or not name.isprintable():
            raise self._error("name")
        if "content" not in data and not (role == "assistant" and tool_calls):
            raise self._error("invalid")
        text, parts = self._content(data.get("content"), role=role, calls=bool(tool_calls))
        if len(text) > settings.CHAT_MAX_MESSAGE_CHARS:
            raise self._error("long", limit=settings.CHAT_MAX_MESSAGE_CHARS)
        return NewMessage(
            role="system" if role in SYSTEM_ROLES else role, content=text, parts=parts, tool_calls=tool_calls,
            tool_call_id=tool_call_id, name=name,
        )

    def _content(self, content: Any, *, role: str, calls: bool) -> tuple[str, tuple[ContentPart, ...] | None]:
        """The text, and the parts when the content is a list of them."""
        if isinstance(content, str):
            return content, None
        if content is None and role == "assistant":
            return "", None
        if not isinstance(content, list) or (not content and not calls):
            raise self._error("content")
        parts: list[ContentPart] = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str) and set(part) <= {"type", "text"}:
                parts.append(part["text"])
            elif kind == "image_url" and role == "user" and isinstance(part.get("image_url"), dict):
                if sum(isinstance(p, ImageInput) for p in parts) == MAX_IMAGES_PER_MESSAGE:
                    raise self._error("images", limit=MAX_IMAGES_PER_MESSAGE)
                image = part["image_url"]
                try:
                    parts.append(image_input(image.get("url"), image.get("detail")))
                except ContentInvalid as error:
                    raise serializers.ValidationError(str(error), code="image") from None
            else:
                raise self._error("content")
        return parts_text(parts), tuple(parts)

    def _tool_calls(self, calls: Any) -> list[dict[str, Any]] | None:
        if calls is None or calls == []:
            return None
        if not isinstance(calls, list):
            raise self._error("tool_calls")
        checked = []
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if not (
                isinstance(function, dict)
                and call.get("type", "function") == "function"
                and isinstance(call.get("id"), str) and 0 < len(call["id"]) <= 128
                and isinstance(function.get("name"), str) and function["name"]
                and isinstance(function.get("arguments"), str)
            ):
                raise self._error("tool_calls")
            checked.append({"id": call["id"], "type": "function",
                            "function": {"name": function["name"], "arguments": function["arguments"]}})
        return checked

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


REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high")
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority")
VERBOSITIES = ("low", "medium", "high")
MAX_METADATA_PAIRS = 16


class MetadataField(serializers.DictField):
    """OpenAI's `metadata`: at most 16 pairs of strings (keys up to 64 characters, values up to 512)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(child=StrictCharField(max_length=512, allow_blank=True), **kwargs)

    def to_internal_value(self, data: Any) -> dict[str, str]:
        values = super().to_internal_value(data)
        if len(values) > MAX_METADATA_PAIRS or any(len(key) > 64 for key in values):
            raise serializers.ValidationError(
                _("metadata has at most 16 pairs, each key at most 64 characters."), code="invalid"
            )
        return values


# The fields with a default or required: built whatever a request sends.
ALWAYS_BUILT = ("model", "messages", "stream")


class RefusingUnknownParameters(serializers.Serializer):
    """An OpenAI request: parameters this server does not support are refused by name rather than
    ignored, together with any other field's error (and in the error's message: the SDKs show only
    the message). `accepted_and_ignored`: parameters taken that change nothing here."""

    accepted_and_ignored: tuple[str, ...] = ()

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        known = {*self.fields, *self.accepted_and_ignored}
        unsupported = {
            name: [_("This server does not support this parameter.")]
            for name in sorted(set(data) - known if isinstance(data, dict) else ())
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


class ChatCompletionRequestSerializer(RefusingUnknownParameters):
    """OpenAI's chat completion request, as far as this server supports it. Parameters it does not
    support (audio, modalities, functions, …) are refused by name rather than ignored."""

    model = printable_name_field(required=False, allow_blank=True, default="")
    messages = serializers.ListField(child=MessageField(), min_length=1, max_length=settings.CHAT_MAX_HISTORY_IMPORT)
    max_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=1_000_000)
    max_completion_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=1_000_000)
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=2.0)
    stream = StrictBooleanField(required=False, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    n = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=128)
    tools = tools_field(required=False)
    tool_choice = ToolChoiceField(required=False)
    parallel_tool_calls = StrictBooleanField(required=False)
    response_format = ResponseFormatField(required=False)
    logprobs = StrictBooleanField(required=False, allow_null=True)
    top_logprobs = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=20)
    logit_bias = serializers.DictField(child=StrictFloatField(min_value=-100, max_value=100), required=False,
                                       allow_null=True)
    store = StrictBooleanField(required=False, allow_null=True)
    metadata = MetadataField(required=False, allow_null=True)
    reasoning_effort = serializers.ChoiceField(choices=REASONING_EFFORTS, required=False, allow_null=True)
    service_tier = serializers.ChoiceField(choices=SERVICE_TIERS, required=False, allow_null=True)
    verbosity = serializers.ChoiceField(choices=VERBOSITIES, required=False, allow_null=True)
    prompt_cache_key = StrictCharField(required=False, max_length=256)
    safety_identifier = StrictCharField(required=False, max_length=256)
    top_p = StrictFloatField(required=False, min_value=0.0, max_value=1.0)
    stop = StopField(required=False)
    presence_penalty = StrictFloatField(required=False, min_value=-2.0, max_value=2.0)
    frequency_penalty = StrictFloatField(required=False, min_value=-2.0, max_value=2.0)
    seed = StrictIntegerField(required=False)
    user = StrictCharField(required=False, max_length=256)

    def get_fields(self) -> dict[str, serializers.Field]:
        """Only the fields a request sends are built (and those with a default): every completion
        builds its serializer's fields, and the thirty it could send cost as much as the rest of its
        validation."""
        data = getattr(self, "initial_data", None)
        if not isinstance(data, dict):
            return super().get_fields()
        return {name: copy.deepcopy(field) for name, field in self._declared_fields.items()
                if name in data or name in ALWAYS_BUILT}



class OpenAIModelSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    owned_by = serializers.CharField()
