"""What an OpenAI client sees of upstream's failures on /v1/, through the official `openai` SDK or
plain HTTP against a served server and the fake upstream: a request upstream refuses comes back
with upstream's own status and words, asked once; a stream upstream ends before its end is never
passed on as whole."""

import json
from typing import Any

import httpx
import openai
import pytest

from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.served import Served

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Hi"}]


def sdk_with_its_own_retries(served: Served) -> openai.OpenAI:
    """The SDK as apps use it: it asks again after a 408, 409, 429 or 5xx (twice by default)."""
    return openai.OpenAI(base_url=f"{served.base_url}/v1", api_key=served.api_key)


def usage_records(served: Served) -> list[tuple]:
    return served.rows("SELECT id, outcome, error_code FROM chat_usagerecord ORDER BY id")


@pytest.mark.parametrize(
    ("status", "upstream_error", "sdk_error", "passed_on"),
    [
        (
            404,
            {"message": "The model `gpt-9` does not exist or you do not have access to it.",
             "type": "invalid_request_error", "param": None, "code": "model_not_found"},
            openai.NotFoundError,
            {"message": "The model `gpt-9` does not exist or you do not have access to it.",
             "type": "invalid_request_error", "param": None, "code": "model_not_found",
             "details": {"upstream_status": 404,
                         "upstream_message": "The model `gpt-9` does not exist or you do not have access to it.",
                         "upstream_code": "model_not_found"}},
        ),
        (
            400,
            {"message": "Unsupported parameter: 'seed' is not supported with this model (key sk-proj-AbCd1234EfGh5678).",
             "type": "invalid_request_error", "param": "seed", "code": "unsupported_parameter"},
            openai.BadRequestError,
            {"message": "Unsupported parameter: 'seed' is not supported with this model (key [redacted]).",
             "type": "invalid_request_error", "param": "seed", "code": "unsupported_parameter",
             "details": {"upstream_status": 400,
                         "upstream_message": "Unsupported parameter: 'seed' is not supported with this model (key [redacted]).",
                         "upstream_code": "unsupported_parameter", "upstream_param": "seed"}},
        ),
    ],
    ids=["404_model_not_found", "400_unsupported_parameter"],
)
def test_a_request_upstream_refuses_reaches_the_sdk_with_upstreams_status_and_words_and_is_asked_once(
    upstream_server: Served, upstream: FakeUpstream, status: int, upstream_error: dict[str, Any],
    sdk_error: type[openai.APIStatusError], passed_on: dict[str, Any],
) -> None:
    upstream.enqueue(*[Behaviour(status=status, error_body={"error": upstream_error})] * 3)
    records_before = usage_records(upstream_server)

    with pytest.raises(openai.APIStatusError) as refused:
        sdk_with_its_own_retries(upstream_server).chat.completions.create(model="gpt-9", messages=MESSAGES, seed=1)

    assert type(refused.value) is sdk_error, f"{refused.value.status_code}: {refused.value.body}"
    assert refused.value.status_code == status
    assert refused.value.body == passed_on
    assert len(upstream.requests) == 1
    new_records = usage_records(upstream_server)[len(records_before):]
    assert [(outcome, error_code) for _id, outcome, error_code in new_records] == [
        ("failed", "upstream_rejected_request")
    ]


def test_upstreams_words_are_not_passed_on_when_it_rejects_the_servers_key(
    upstream_server: Served, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Behaviour(status=401, error_body={"error": {
        "message": "Incorrect API key provided: sk-ab***yz.", "type": "invalid_request_error", "param": None,
        "code": "invalid_api_key",
    }}))

    with pytest.raises(openai.InternalServerError) as failed:
        openai.OpenAI(base_url=f"{upstream_server.base_url}/v1", api_key=upstream_server.api_key,
                      max_retries=0).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert failed.value.body == {
        "message": "The model provider rejected the server's API key; the operator has to check OPENAI_API_KEY.",
        "type": "server_error", "param": None, "code": "upstream_auth_failed", "details": {"upstream_status": 401},
    }


def chunk(content: str) -> dict[str, Any]:
    """A chunk with text and no finish_reason, as an upstream sends the middle of an answer."""
    return {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}


def stream_completion(served: Served, session_id: str, content: str) -> list[str]:
    """The `data:` of each event of a streamed /v1/chat/completions, as sent."""
    with httpx.stream(
        "POST", f"{served.base_url}/v1/chat/completions", timeout=30,
        headers={**served.headers(), "X-Session-Id": session_id},
        json={"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": content}]},
    ) as response:
        assert response.status_code == 200
        return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


def test_a_stream_upstream_ends_cleanly_but_without_its_end_is_an_interrupted_answer_never_replayed(
    upstream_server: Served, upstream: FakeUpstream
) -> None:
    """The connection closes normally after two chunks, with no finish_reason and no [DONE]: the
    client gets what arrived and then an error event, never a finish_reason "stop" or a [DONE];
    the answer is stored incomplete, and the next turn's prompt leaves the cut turn out."""
    upstream.enqueue(Behaviour(events=(chunk("Once"), chunk(" upon"))), Behaviour(reply="Hello again."))

    events = stream_completion(upstream_server, "cut-off", "Tell me a story.")

    *chunks, last = [json.loads(data) if data != "[DONE]" else data for data in events]
    assert "[DONE]" not in events
    assert [choice["finish_reason"] for c in chunks for choice in c["choices"]] == [None, None, None]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Once upon"
    messages = httpx.get(f"{upstream_server.base_url}/api/v1/sessions/cut-off/messages",
                         headers=upstream_server.headers()).json()["results"]
    assert [(m["role"], m["content"], m["status"]) for m in messages] == [
        ("user", "Tell me a story.", "incomplete"), ("assistant", "Once upon", "incomplete"),
    ]
    assert last == {"error": {
        "message": "The model provider's connection broke off in the middle of its answer; what it sent was kept.",
        "type": "server_error", "param": None, "code": "upstream_interrupted",
        "details": {"session_id": "cut-off", "user_message_id": messages[0]["message_id"]},
    }}

    stream_completion(upstream_server, "cut-off", "Say hello.")

    assert upstream.requests[1].json["messages"] == [{"role": "user", "content": "Say hello."}]
