"""A Responses API request (`POST /v1/responses`), checked, and turned into what a chat turn takes.

The Responses API's items map onto stored messages: a `message` item (input_text and input_image
parts, or an assistant's output_text) is a message; `function_call` items are an assistant message's
tool calls; a `function_call_output` is a tool result. Its tools, tool_choice and text.format are
the chat completions' tools, tool_choice and response_format in another spelling: upstream is any
chat-completions model.
"""

from typing import Any

from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from chat.openai.serializers import MetadataField, RefusingUnknownParameters
from chat.sessions.content import ContentInvalid, ContentPart, ImageInput, image_input, parts_text
from chat.turns.inputs import NewMessage
from chat.turns.options import FUNCTION_NAME
from llmserver.http.fields import StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField

ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
TOOL_CHOICES = ("none", "auto", "required")
# Fields the SDKs send that change nothing here: accepted, and not passed on.
ACCEPTED_AND_IGNORED = ("include", "background", "stream_options", "prompt_cache_key", "safety_identifier",
                        "service_tier", "reasoning", "top_logprobs", "max_tool_calls")


def _invalid(message: Any) -> serializers.ValidationError:
    return serializers.ValidationError(message, code="invalid")


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]})
class InputField(serializers.Field):
    """`input`: a string (the user's message), or a list of items, in order."""

    def to_internal_value(self, data: Any) -> list[NewMessage]:
        if isinstance(data, str):
            if not data.strip():
                raise _invalid(_("input must not be empty."))
            return [NewMessage(role="user", content=data)]
        if not isinstance(data, list) or not data:
            raise _invalid(
                _("input is a string, or a list of items (messages, function calls, function call outputs).")
            )
        messages: list[NewMessage] = []
        for index, item in enumerate(data):
            try:
                _add_item(messages, item)
            except ContentInvalid as error:
                raise _invalid(_("Item %(index)d: %(reason)s") % {"index": index, "reason": error}) from None
        return messages

    def to_representation(self, value: Any) -> Any:
        return value


def _add_item(messages: list[NewMessage], item: Any) -> None:
    if not isinstance(item, dict):
        raise ContentInvalid(_("An item is an object with a type: message, function_call or function_call_output."))
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        messages.append(_message(item))
    elif kind == "function_call":
        call = _function_call(item)
        last = messages[-1] if messages else None
        if last is not None and last.role == "assistant" and last.parts is None:
            # Calls that follow an assistant's message (or each other) are that message's calls.
            calls = [*(last.tool_calls or ()), call]
            messages[-1] = NewMessage(role="assistant", content=last.content, tool_calls=calls)
        else:
            messages.append(NewMessage(role="assistant", content="", tool_calls=[call]))
    elif kind == "function_call_output":
        call_id, output = item.get("call_id"), item.get("output")
        if isinstance(output, list):
            output = parts_text([_text_part(part) for part in output])
        if not isinstance(call_id, str) or not call_id or len(call_id) > 128 or not isinstance(output, str):
            raise ContentInvalid(_("A function_call_output has a call_id and an output (a string)."))
        messages.append(NewMessage(role="tool", content=output, tool_call_id=call_id))
    else:
        raise ContentInvalid(
            _("Items of type %(type)s are not supported; send message, function_call or function_call_output.")
            % {"type": str(kind)[:64]}
        )


def _message(item: dict[str, Any]) -> NewMessage:
    role = ROLES.get(item.get("role"))
    if role is None:
        raise ContentInvalid(_("A message's role is one of: user, system, developer, assistant."))
    content = item.get("content")
    if isinstance(content, str):
        return NewMessage(role=role, content=content)
    if not isinstance(content, list):
        raise ContentInvalid(_("A message's content is a string or a list of parts."))
    parts: list[ContentPart] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "input_image" and role == "user":
            if not isinstance(part.get("image_url"), str):
                raise ContentInvalid(_("An input_image needs an image_url (file ids are not supported)."))
            parts.append(image_input(part["image_url"], part.get("detail")))
        else:
            parts.append(_text_part(part))
    return NewMessage(role=role, content=parts_text(parts), parts=tuple(parts))


def _text_part(part: Any) -> str:
    if isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text") and isinstance(
        part.get("text"), str
    ):
        return part["text"]
    raise ContentInvalid(_("A message's parts are input_text and input_image (or an assistant's output_text)."))


def _function_call(item: dict[str, Any]) -> dict[str, Any]:
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
    if not (isinstance(call_id, str) and 0 < len(call_id) <= 128 and isinstance(name, str) and name
            and isinstance(arguments, str)):
        raise ContentInvalid(_("A function_call has a call_id, a name and arguments (strings)."))
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


@extend_schema_field({"type": "object", "required": ["type", "name"], "properties": {
    "type": {"type": "string", "enum": ["function"]}, "name": {"type": "string"}, "description": {"type": "string"},
    "parameters": {"type": "object"}, "strict": {"type": "boolean", "nullable": True},
}})
class ToolField(serializers.Field):
    """A Responses tool: `{"type": "function", "name", "description", "parameters", "strict"}`."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, dict) and data.get("type") != "function":
            raise _invalid(
                _("Only function tools are supported; %(type)s is not.") % {"type": str(data.get("type"))[:64]}
            )
        if (
            not isinstance(data, dict)
            or set(data) - {"type", "name", "description", "parameters", "strict"}
            or not isinstance(data.get("name"), str) or not FUNCTION_NAME.match(data["name"])
            or not isinstance(data.get("description") or "", str)
            or not isinstance(data.get("parameters") or {}, dict)
            or not isinstance(data.get("strict", False), (bool, type(None)))
        ):
            raise _invalid(_(
                "Each tool is a function: type \"function\", a name of letters, digits, _ and - (at most 64), a "
                "description, parameters (a JSON schema object) and strict."
            ))
        return data

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field({"oneOf": [{"type": "string", "enum": list(TOOL_CHOICES)}, {"type": "object"}]})
class ToolChoiceField(serializers.Field):
    def to_internal_value(self, data: Any) -> Any:
        if data in TOOL_CHOICES:
            return data
        if isinstance(data, dict) and data.get("type") == "function" and isinstance(data.get("name"), str):
            return data
        raise _invalid(_("tool_choice is \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"name\"}."))

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field({"type": "object", "properties": {"format": {"type": "object"}, "verbosity": {"type": "string"}}})
class TextField(serializers.Field):
    """`text`: `{"format": {"type": "text"}}`, `{"type": "json_object"}` or `{"type": "json_schema",
    "name", "schema", "strict", "description"}`; `verbosity` passes."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        text_format = data.get("format", {"type": "text"}) if isinstance(data, dict) else None
        kind = text_format.get("type") if isinstance(text_format, dict) else None
        valid = kind in ("text", "json_object") or (
            kind == "json_schema" and isinstance(text_format.get("name"), str)
            and FUNCTION_NAME.match(text_format["name"]) and isinstance(text_format.get("schema"), dict)
        )
        if not valid or set(data) - {"format", "verbosity"}:
            raise _invalid(_(
                "text is {\"format\": {\"type\": \"text\"}}, {\"format\": {\"type\": \"json_object\"}} or {\"format\": "
                "{\"type\": \"json_schema\", \"name\", \"schema\"}}."
            ))
        return data

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "object", "properties": {"id": {"type": "string"}}}]})
class ConversationField(serializers.Field):
    def to_internal_value(self, data: Any) -> str:
        conversation = data.get("id") if isinstance(data, dict) else data
        if not isinstance(conversation, str) or not conversation:
            raise _invalid(_("conversation is a conversation's id, or {\"id\": its id}."))
        return conversation

    def to_representation(self, value: Any) -> Any:
        return value


class ResponseRequestSerializer(RefusingUnknownParameters):
    model = StrictCharField(required=False, allow_blank=True, default="", max_length=200)
    input = InputField()
    instructions = StrictCharField(required=False, allow_null=True, allow_blank=True, trim_whitespace=False,
                                   max_length=100_000)
    previous_response_id = StrictCharField(required=False, allow_null=True, max_length=64)
    conversation = ConversationField(required=False, allow_null=True)
    store = StrictBooleanField(required=False, allow_null=True)
    stream = StrictBooleanField(required=False, default=False)
    tools = serializers.ListField(child=ToolField(), required=False, max_length=128)
    tool_choice = ToolChoiceField(required=False)
    parallel_tool_calls = StrictBooleanField(required=False, allow_null=True)
    text = TextField(required=False)
    max_output_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=1_000_000)
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=2.0)
    top_p = StrictFloatField(required=False, allow_null=True, min_value=0.0, max_value=1.0)
    metadata = MetadataField(required=False, allow_null=True)
    truncation = serializers.ChoiceField(choices=["auto", "disabled"], required=False, allow_null=True)
    user = StrictCharField(required=False, max_length=256)

    accepted_and_ignored = ACCEPTED_AND_IGNORED

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        values = super().to_internal_value(data)
        if values.get("previous_response_id") and values.get("conversation"):
            raise serializers.ValidationError({"conversation": [
                _("Send previous_response_id or conversation, not both.")
            ]})
        return values


def upstream_options(data: dict[str, Any]) -> dict[str, Any]:
    """The request's tools, tool choice and text format as chat completions spell them."""
    options: dict[str, Any] = {}
    if data.get("tools"):
        options["tools"] = [{"type": "function", "function": {
            key: tool[key] for key in ("name", "description", "parameters", "strict") if tool.get(key) is not None
        }} for tool in data["tools"]]
    choice = data.get("tool_choice")
    if choice is not None:
        options["tool_choice"] = choice if isinstance(choice, str) else {
            "type": "function", "function": {"name": choice["name"]}}
    if data.get("parallel_tool_calls") is not None:
        options["parallel_tool_calls"] = data["parallel_tool_calls"]
    text_format = (data.get("text") or {}).get("format") or {"type": "text"}
    if text_format["type"] == "json_object":
        options["response_format"] = {"type": "json_object"}
    elif text_format["type"] == "json_schema":
        options["response_format"] = {"type": "json_schema", "json_schema": {
            key: text_format[key] for key in ("name", "schema", "strict", "description") if key in text_format}}
    for name in ("top_p", "user"):
        if data.get(name) is not None:
            options[name] = data[name]
    return options


def images_of(messages: list[NewMessage]) -> list[ImageInput]:
    return [image for message in messages for image in message.images]
