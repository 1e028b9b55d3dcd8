"""A request upstream refuses (chat/providers/rejection.py): upstream's status, and as much of its
own text as may reach the client, with whatever looks like a secret taken out. What a client sees
of it over HTTP is in tests/chat/openai/test_upstream_failures.py."""

from typing import Any

import httpx2
import openai
import pytest

from chat.exceptions import UpstreamAuthFailed, UpstreamRejectedRequest
from chat.providers.openai_compatible import retry_wait_seconds, upstream_error_from
from chat.providers.rejection import MAX_MESSAGE_CHARS, redacted

SDK_ERRORS = {400: openai.BadRequestError, 401: openai.AuthenticationError, 403: openai.PermissionDeniedError,
              404: openai.NotFoundError, 422: openai.UnprocessableEntityError}


def status_error(status: int, body: Any, content_type: str = "application/json") -> openai.APIStatusError:
    """What the SDK raises for an error status: `body` is what it parsed (inside `error`, if any)."""
    response = httpx2.Response(status, headers={"content-type": content_type},
                               request=httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions"))
    return SDK_ERRORS[status]("upstream said no", response=response, body=body)


@pytest.mark.parametrize(
    ("text", "passed_on"),
    [
        ("The model `gpt-5x` does not exist or you do not have access to it.",
         "The model `gpt-5x` does not exist or you do not have access to it."),
        ("The model meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo does not exist",
         "The model meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo does not exist"),
        ("This model's maximum context length is 8192 tokens; you asked for max_tokens=9000.",
         "This model's maximum context length is 8192 tokens; you asked for max_tokens=9000."),
        ("Incorrect API key provided: sk-ab***yz.", "Incorrect API key provided: [redacted]."),
        ("Key sk-proj-AbCd_1234-EfGh5678 is not allowed", "Key [redacted] is not allowed"),
        ("Groq said gsk_abcdEFGH1234 and Google said AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
         "Groq said [redacted] and Google said [redacted]"),
        ("Header was Authorization: Bearer abc.def-ghi", "Header was Authorization: Bearer [redacted]"),
        ('Got {"api_key": "hunter2", "x-api-key": hunter3}', 'Got {"api_key": "[redacted]", "x-api-key": [redacted]}'),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl expired", "token [redacted] expired"),
        ("deployment d41d8cd98f00b204e9800998ecf8427e not found", "deployment [redacted] not found"),
        ("no NUL\x00 here", "no NUL\ufffd here"),
    ],
)
def test_anything_like_a_secret_is_taken_out_and_model_names_stay_whole(text: str, passed_on: str) -> None:
    assert redacted(text) == passed_on


def test_a_long_message_is_cut_after_its_secrets_are_taken_out() -> None:
    # A secret that straddles the cut is recognised whole, not left as a stub too short to match.
    text = "x " * 495 + "d41d8cd98f00b204e9800998ecf8427e" + " y" * 1000

    assert redacted(text) == "x " * 495 + "[redacted]"
    assert len(redacted(text)) == MAX_MESSAGE_CHARS


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        ({"message": "Unknown model.", "type": "invalid_request_error", "code": "model_not_found", "param": "model"},
         "application/json", "Unknown model."),
        # vLLM: the fields at the top level, and a number for code.
        ({"object": "error", "message": "The model `x` does not exist.", "type": "NotFoundError", "code": 404},
         "application/json", "The model `x` does not exist."),
        # Ollama: {"error": "<message>"}.
        ("model 'x' not found", "application/json; charset=utf-8", "model 'x' not found"),
        # A proxy's HTML page is not upstream's sentence.
        ("<html><body>404 Not Found</body></html>", "text/html", None),
        (None, "application/json", None),
    ],
    ids=["openai", "vllm", "ollama", "html", "empty"],
)
def test_a_refused_request_keeps_upstreams_status_and_what_it_said(
    body: Any, content_type: str, message: str | None
) -> None:
    error = upstream_error_from(status_error(404, body, content_type))

    assert isinstance(error, UpstreamRejectedRequest)
    assert (error.status_code, error.model_answered) == (404, False)
    assert error.details.get("upstream_message") == message
    assert error.openai_fields["type"] == "invalid_request_error"
    assert error.openai_fields.get("message") == message
    if isinstance(body, dict) and body.get("code") == "model_not_found":
        assert error.openai_fields["code"] == error.details["upstream_code"] == "model_not_found"
        assert error.openai_fields["param"] == error.details["upstream_param"] == "model"
    else:
        assert "code" not in error.openai_fields and error.openai_fields["param"] is None


@pytest.mark.parametrize("status", [401, 403])
def test_a_rejected_key_never_passes_on_upstreams_text(status: int) -> None:
    error = upstream_error_from(status_error(status, {"message": "Incorrect API key provided: sk-ab***yz."}))

    assert isinstance(error, UpstreamAuthFailed)
    assert error.details == {"upstream_status": status} and not error.openai_fields
    assert "sk-" not in str(error)


@pytest.mark.parametrize("status", [400, 404, 422])
def test_a_refused_request_is_not_asked_again(status: int) -> None:
    assert retry_wait_seconds(status_error(status, None), attempt=0) is None
