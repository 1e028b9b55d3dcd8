"""What a turn may ask of the model beyond its messages, checked the same way on both APIs: tool
definitions, the tool choice, the response format. They are passed upstream as they are; these
fields only make sure that what is passed is what OpenAI's format says, so that a mistake is a 400
naming it here rather than a refusal from upstream."""

import re
from typing import Any

from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

# OpenAI's rule for a function's name.
FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_TOOLS = 128
TOOL_CHOICES = ("none", "auto", "required")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")


def _invalid(field: serializers.Field) -> serializers.ValidationError:
    # Not field.fail(): it fills placeholders with str.format, and these sentences show JSON braces.
    return serializers.ValidationError(field.error_messages["invalid"], code="invalid")


def _function_named(value: Any) -> bool:
    return isinstance(value, str) and FUNCTION_NAME.match(value) is not None


@extend_schema_field({"type": "object", "required": ["type", "function"], "properties": {
    "type": {"type": "string", "enum": ["function"]},
    "function": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "description": {"type": "string"}, "parameters": {"type": "object"},
        "strict": {"type": "boolean", "nullable": True}}},
}})
class ToolField(serializers.Field):
    """One tool definition: `{"type": "function", "function": {"name", "description", "parameters", "strict"}}`."""

    default_error_messages = {
        "invalid": _(
            "Each tool is {\"type\": \"function\", \"function\": {\"name\", \"description\", \"parameters\"}}, its "
            "name made of letters, digits, _ and - (at most 64), its parameters a JSON schema object."
        ),
    }

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        function = data.get("function") if isinstance(data, dict) else None
        if (
            not isinstance(function, dict)
            or data.get("type") != "function"
            or set(data) - {"type", "function"}
            or not _function_named(function.get("name"))
            or set(function) - {"name", "description", "parameters", "strict"}
            or not isinstance(function.get("description", ""), str)
            or not isinstance(function.get("parameters", {}), dict)
            or not isinstance(function.get("strict", False), (bool, type(None)))
        ):
            raise _invalid(self)
        return data

    def to_representation(self, value: Any) -> Any:
        return value


def tools_field(**kwargs: Any) -> serializers.ListField:
    return serializers.ListField(child=ToolField(), max_length=MAX_TOOLS, **kwargs)


@extend_schema_field({"oneOf": [
    {"type": "string", "enum": list(TOOL_CHOICES)},
    {"type": "object", "properties": {"type": {"type": "string", "enum": ["function"]},
                                      "function": {"type": "object", "properties": {"name": {"type": "string"}}}}},
]})
class ToolChoiceField(serializers.Field):
    default_error_messages = {
        "invalid": _(
            "tool_choice is \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\"}}."
        ),
    }

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) and data in TOOL_CHOICES:
            return data
        function = data.get("function") if isinstance(data, dict) else None
        if isinstance(function, dict) and data.get("type") == "function" and _function_named(function.get("name")):
            return data
        raise _invalid(self)

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field({"type": "object", "required": ["type"], "properties": {
    "type": {"type": "string", "enum": list(RESPONSE_FORMATS)},
    "json_schema": {"type": "object", "properties": {
        "name": {"type": "string"}, "description": {"type": "string"}, "schema": {"type": "object"},
        "strict": {"type": "boolean", "nullable": True}}},
}})
class ResponseFormatField(serializers.Field):
    """`{"type": "text"}`, `{"type": "json_object"}` or
    `{"type": "json_schema", "json_schema": {"name", "schema", …}}`."""

    default_error_messages = {
        "invalid": _(
            "response_format is {\"type\": \"text\"}, {\"type\": \"json_object\"} or {\"type\": \"json_schema\", "
            "\"json_schema\": {\"name\", \"schema\"}}, the name made of letters, digits, _ and - (at most 64)."
        ),
    }

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict) or data.get("type") not in RESPONSE_FORMATS:
            raise _invalid(self)
        if data["type"] != "json_schema":
            if set(data) != {"type"}:
                raise _invalid(self)
            return data
        schema = data.get("json_schema")
        if (
            set(data) != {"type", "json_schema"}
            or not isinstance(schema, dict)
            or not _function_named(schema.get("name"))
            or set(schema) - {"name", "description", "schema", "strict"}
            or not isinstance(schema.get("schema", {}), dict)
            or not isinstance(schema.get("strict", False), (bool, type(None)))
        ):
            raise _invalid(self)
        return data

    def to_representation(self, value: Any) -> Any:
        return value
