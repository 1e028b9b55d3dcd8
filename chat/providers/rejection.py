"""An upstream's refusal of a request (a 4xx other than 401, 403 and 429), and what of its own text
may reach the client: the `message`, `code` and `param` of its JSON body, cut to a length, with
whatever looks like a secret taken out.

Upstream's text used to be kept from clients altogether, because it can quote a key ("Incorrect
API key provided: sk-ab***yz"). That is a 401's text, and a 401's or a 403's still never is passed
on (openai_compatible.py says whose key failed instead). A 400's or a 404's says what the client
has to change ("The model `gpt-5x` does not exist"), so it is passed on, with these taken out
first: a token that starts like a key (`sk-`, `gsk_`, `AIza`, a JWT, …), what follows `Bearer`,
the value after a name like `api_key=`, and any run of 24 or more base64-like letters and digits.
Model names (words joined by hyphens, dots and slashes) stay whole; the trade-off accepted is that
a secret with no known prefix and a hyphen every few characters would not be caught.
"""

import re
from typing import Any

import openai

from chat.exceptions import UpstreamRejectedRequest
from llmserver.http.parsers import storable

# Long enough for any sentence an upstream explains itself in; a longer body is not a sentence.
MAX_MESSAGE_CHARS = 1000
# `code` and `param` are identifiers (`model_not_found`, `messages[0].content`).
MAX_FIELD_CHARS = 200
REDACTED = "[redacted]"
# OpenAI's own type for a request it refuses, whatever the status (its 404 model_not_found too).
REJECTION_TYPE = "invalid_request_error"

_SECRETS = [
    # Keys by their prefix: OpenAI's and Anthropic's (`sk-`, `sk-proj-`, `sk-ant-`, masked or
    # not), Groq's, Hugging Face's, xAI's, this server's own, Google's, GitHub's, Slack's.
    re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-*]{3,}"),
    re.compile(r"\b(?:gsk|hf|llms|ghp|gho|github_pat)_[A-Za-z0-9_*]{6,}"),
    re.compile(r"\bxai-[A-Za-z0-9*]{6,}"),
    re.compile(r"\bAIza[A-Za-z0-9_\-*]{10,}"),
    re.compile(r"\bxox[abpr]-[A-Za-z0-9\-*]{6,}"),
    # A JSON web token: its header, base64url of `{"`, then the payload and signature.
    re.compile(r"\beyJ[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]*){1,2}"),
]
_BEARER = re.compile(r"(?i)\b(bearer\s+)\S+")
_NAMED_SECRET = re.compile(
    r"(?i)\b([\w-]{0,40}(?:key|token|secret|password)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;)\]}]+"
)
# A long run of base64 or hex characters. Slashes, hyphens and dots end a run, so that model
# names (meta-llama/Meta-Llama-3.1-70B-Instruct) are left whole.
_LONG_RUN = re.compile(r"[A-Za-z0-9+_=]{24,}")


def redacted(text: str, *, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` without anything that looks like a secret, then cut to `limit` characters (in that
    order, so that a cut cannot leave a key's start too short to be recognised), and storable."""
    # An upstream's body may be megabytes: what lies far past the cut is not worth searching.
    text = text[: 2 * limit]
    for pattern in _SECRETS:
        text = pattern.sub(REDACTED, text)
    text = _BEARER.sub(lambda match: match.group(1) + REDACTED, text)
    text = _NAMED_SECRET.sub(lambda match: match.group(1) + REDACTED, text)
    text = _LONG_RUN.sub(_redact_if_secret_like, text)
    return storable(text[:limit])


def _redact_if_secret_like(match: re.Match[str]) -> str:
    run = match.group(0)
    looks_random = any(c.isdigit() for c in run) and any(c.isalpha() for c in run)
    return REDACTED if looks_random else run


def _text_field(value: Any, *, limit: int) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return redacted(value.strip(), limit=limit)


def _error_object(exc: openai.APIStatusError) -> dict[str, Any]:
    """Upstream's error object: OpenAI's `{"error": {...}}` (the SDK hands over what is inside),
    vLLM's fields at the top level, or Ollama's `{"error": "<message>"}`. A body that is not JSON
    (an HTML page from a proxy) gives nothing."""
    if isinstance(exc.body, dict):
        return exc.body
    if isinstance(exc.body, str) and "json" in exc.response.headers.get("content-type", ""):
        return {"message": exc.body}
    return {}


def rejection_from(exc: openai.APIStatusError) -> UpstreamRejectedRequest:
    """The refusal, with upstream's status. Its message, code and param, when it sent them, are in
    `details` (our own shape) and in `openai_fields` (OpenAI's shape, under /v1/)."""
    error = _error_object(exc)
    message = _text_field(error.get("message"), limit=MAX_MESSAGE_CHARS)
    code = _text_field(error.get("code"), limit=MAX_FIELD_CHARS)
    param = _text_field(error.get("param"), limit=MAX_FIELD_CHARS)
    details: dict[str, Any] = {"upstream_status": exc.status_code}
    openai_fields: dict[str, Any] = {"type": REJECTION_TYPE, "param": param}
    if message:
        details["upstream_message"] = openai_fields["message"] = message
    if code:
        details["upstream_code"] = openai_fields["code"] = code
    if param:
        details["upstream_param"] = param
    return UpstreamRejectedRequest(status_code=exc.status_code, details=details, openai_fields=openai_fields)
