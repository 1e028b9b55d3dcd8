"""OpenAPI: the error shape every operation documents, and what every operation can answer whatever
its own code does (a drf-spectacular postprocessing hook)."""

from typing import Any

from rest_framework import serializers


class ErrorSerializer(serializers.Serializer):
    """The one error shape of every /api/v1/ endpoint."""

    success = serializers.BooleanField(default=False)
    error_code = serializers.CharField(help_text="Stable, machine-readable.")
    error_message = serializers.CharField(help_text="A sentence for people, in the request's language.")
    details = serializers.DictField(help_text="Per-field errors, or facts about the failure.")


# Answers any operation can give, whatever its own code does: the content negotiation (406), and
# for a request body the body checks in front of every view (body_limit.py: 411, 413)
# and the parser (415). Each is documented with the operation's own error shape.
_ANY_OPERATION = ("406",)
_WITH_A_BODY = ("411", "413", "415")

# OpenAPI 3.0 cannot describe a stream of server-sent events; each event is documented as what it
# is, a name and a data line (JSON, or OpenAI's closing `[DONE]`).
SERVER_SENT_EVENT = {
    "type": "object",
    "description": "One server-sent event: `event` is its name (delta, done, error; none in OpenAI's "
    "stream), `data` its JSON text.",
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
    "required": ["data"],
}


def document_common_answers(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook (SPECTACULAR_SETTINGS): see the constants above."""
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            error = next((responses[code] for code in sorted(responses) if code.startswith("4")), None)
            if error is not None:
                statuses = _ANY_OPERATION + (_WITH_A_BODY if "requestBody" in operation else ())
                for code in statuses:
                    responses.setdefault(code, error)
            for response in responses.values():
                stream = response.get("content", {}).get("text/event-stream")
                if stream is not None:
                    response["content"]["text/event-stream"] = {**stream, "schema": SERVER_SENT_EVENT}
    return result
