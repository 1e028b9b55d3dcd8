"""`POST /api/v1/chat` with `"stream": true`, over real HTTP against the served server and the fake
upstream: the events, what is stored, and what happens when either side goes away mid-answer."""

import json
import socket

import httpx
import pytest

from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.metrics import metric
from tests.support.served import Served, eventually, manage, parse_events, session_results, stream_chat

pytestmark = pytest.mark.e2e

LONG_REPLY = " ".join(f"word{n}" for n in range(40))


def stored(served: Served, session_id: str) -> tuple[list[dict], list[dict]]:
    """The session's messages and usage records, as the API shows them."""
    return session_results(served, session_id, "messages"), session_results(served, session_id, "usage")


def test_a_streamed_turn_sends_each_delta_then_the_json_response(upstream_server: Served, upstream: FakeUpstream) -> None:
    upstream.enqueue(Behaviour(reply="The answer is four.", usage=(12, 5)))

    response, events = stream_chat(upstream_server, session_id="s-events", user_message="2+2?")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    names = [name for name, _ in events]
    assert names == ["delta"] * (len(events) - 1) + ["done"]
    assert "".join(data["delta"] for name, data in events if name == "delta") == "The answer is four."
    assert len(events) - 1 == 4, "one event per upstream delta"
    done = events[-1][1]
    json_keys = httpx.post(
        f"{upstream_server.base_url}/api/v1/chat", json={"session_id": "s-json-keys", "user_message": "2+2?"},
        headers=upstream_server.headers(),
    ).json().keys()
    assert done.keys() == json_keys
    assert (done["response_text"], done["prompt_tokens"], done["completion_tokens"], done["total_tokens_used"]) == (
        "The answer is four.", 12, 5, 17
    )
    assert done["session_id"] == "s-events" and done["response_time"] > 0
    sent = upstream.requests[0].json
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_what_a_streamed_turn_stores_is_what_a_json_turn_stores(upstream_server: Served, upstream: FakeUpstream) -> None:
    upstream.enqueue(Behaviour(reply="Same answer.", usage=(30, 3)), Behaviour(reply="Same answer.", usage=(30, 3)))

    streamed, events = stream_chat(upstream_server, session_id="s-streamed", user_message="Hello", role="Be brief.")
    plain = httpx.post(
        f"{upstream_server.base_url}/api/v1/chat",
        json={"session_id": "s-plain", "user_message": "Hello", "role": "Be brief."}, headers=upstream_server.headers(),
    )

    assert streamed.status_code == plain.status_code == 200
    comparable_message = ("role", "content", "status", "prompt_tokens", "completion_tokens", "model", "error_code")
    comparable_usage = ("model", "prompt_tokens", "completion_tokens", "total_tokens", "usage_estimated", "outcome",
                        "key_source", "error_code")
    (streamed_messages, streamed_usage), (plain_messages, plain_usage) = (
        stored(upstream_server, "s-streamed"), stored(upstream_server, "s-plain")
    )
    assert [{k: m[k] for k in comparable_message} for m in streamed_messages] == [
        {k: m[k] for k in comparable_message} for m in plain_messages
    ]
    assert [{k: u[k] for k in comparable_usage} for u in streamed_usage] == [
        {k: u[k] for k in comparable_usage} for u in plain_usage
    ]
    assert [m["status"] for m in streamed_messages] == ["complete", "complete"]
    assert len(streamed_usage) == 1 and streamed_usage[0]["outcome"] == "success"
    session = httpx.get(f"{upstream_server.base_url}/api/v1/sessions/s-streamed", headers=upstream_server.headers())
    assert session.json()["total_tokens"] == 33


def test_a_client_gone_mid_stream_closes_upstream_and_keeps_the_partial_answer(
    upstream_server: Served, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Behaviour(reply=LONG_REPLY, word_delay=0.2))
    received: list[str] = []
    with httpx.stream(
        "POST", f"{upstream_server.base_url}/api/v1/chat",
        json={"session_id": "s-gone", "user_message": "Tell me a long story.", "stream": True},
        headers=upstream_server.headers(), timeout=30,
    ) as response:
        assert response.status_code == 200
        for _name, data in parse_events(response.iter_lines()):
            received.append(data["delta"])
            if len(received) == 3:
                break

    # Upstream sees its connection closed while it still had words to send (every 0.2 s for 8 s more).
    assert eventually(lambda: upstream.disconnects == 1, timeout=5)
    # The usage record is there from the turn's start (written ahead of the call): wait for the answer.
    messages, usage = eventually(lambda: (lambda s: s if len(s[0]) == 2 else None)(stored(upstream_server, "s-gone")))
    assert [(m["role"], m["status"], m["error_code"]) for m in messages] == [
        ("user", "incomplete", "client_disconnected"), ("assistant", "incomplete", "client_disconnected"),
    ]
    partial = messages[1]["content"]
    assert partial.startswith("".join(received)) and len(partial) < len(LONG_REPLY)
    # Recorded as partial, with our own count of what was generated (and once: see the end).
    assert (usage[0]["outcome"], usage[0]["usage_estimated"], usage[0]["error_code"]) == (
        "partial", True, "client_disconnected"
    )
    assert usage[0]["completion_tokens"] >= 3 and usage[0]["prompt_tokens"] > 0
    # The session is free again, and the cut-short turn is not replayed.
    upstream.enqueue(Behaviour(reply="Fresh."))
    again = httpx.post(f"{upstream_server.base_url}/api/v1/chat", json={"session_id": "s-gone", "user_message": "Hi"},
                       headers=upstream_server.headers())
    assert again.status_code == 200, again.text
    assert [m["content"] for m in upstream.requests[-1].json["messages"]] == ["Hi"]
    assert sorted(record["outcome"] for record in stored(upstream_server, "s-gone")[1]) == ["partial", "success"]


def test_upstream_dropping_mid_stream_ends_with_an_error_event_and_keeps_the_partial_answer(
    upstream_server: Served, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Behaviour(reply="one two three four five six", drop_after_words=3))

    response, events = stream_chat(upstream_server, session_id="s-drop", user_message="Count.")

    assert response.status_code == 200
    assert [name for name, _ in events] == ["delta", "delta", "delta", "error"]
    error = events[-1][1]
    assert (error["success"], error["error_code"]) == (False, "upstream_interrupted")
    assert error["details"]["session_id"] == "s-drop" and error["error_message"]
    messages, usage = stored(upstream_server, "s-drop")
    assert [(m["role"], m["status"]) for m in messages] == [("user", "incomplete"), ("assistant", "incomplete")]
    assert messages[1]["content"] == "one two three"
    assert len(usage) == 1 and usage[0]["outcome"] == "partial" and usage[0]["completion_tokens"] == 3


def test_a_failure_before_the_first_delta_is_an_ordinary_error_response(
    upstream_server: Served, upstream: FakeUpstream
) -> None:
    # The served server retries twice (LLM_MAX_RETRIES defaults to 2): three 503s in a row.
    upstream.enqueue(*[Behaviour(status=503)] * 3)

    response, events = stream_chat(upstream_server, session_id="s-before", user_message="Hello?")

    assert response.status_code == 502
    assert response.json()["error_code"] == "upstream_error"
    messages, usage = stored(upstream_server, "s-before")
    assert [(m["role"], m["status"]) for m in messages] == [("user", "failed")]
    assert len(usage) == 1 and usage[0]["outcome"] == "failed"

    invalid, _ = stream_chat(upstream_server, user_message="")
    assert invalid.status_code == 400 and invalid.json()["error_code"] == "validation_error"


def test_a_client_that_accepts_only_event_streams_is_answered(upstream_server: Served, upstream: FakeUpstream) -> None:
    headers = {**upstream_server.headers(), "Accept": "text/event-stream"}
    ok = httpx.post(f"{upstream_server.base_url}/api/v1/chat", json={"user_message": "Hi", "stream": True},
                    headers=headers)
    refused = httpx.post(f"{upstream_server.base_url}/api/v1/chat", json={"user_message": "", "stream": True},
                         headers=headers)

    assert ok.status_code == 200 and list(parse_events(iter(ok.text.split("\n"))))[-1][0] == "done"
    assert refused.status_code == 400
    assert [(name, data["error_code"]) for name, data in parse_events(iter(refused.text.split("\n")))] == [
        ("error", "validation_error")
    ]


def test_a_client_gone_mid_stream_on_a_raw_socket_is_handled_the_same(upstream_server: Served, upstream: FakeUpstream) -> None:
    """No HTTP client library: the request written by hand, the socket closed after the first delta."""
    upstream.enqueue(Behaviour(reply=LONG_REPLY, word_delay=0.2))
    body = json.dumps({"session_id": "s-raw", "user_message": "Go on.", "stream": True})
    host, port = upstream_server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall((
            f"POST /api/v1/chat HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {upstream_server.api_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        ).encode())
        seen = b""
        while b"event: delta" not in seen:
            received = sock.recv(4096)
            assert received, f"the server closed the connection before the first delta: {seen!r}"
            seen += received

    assert eventually(lambda: upstream.disconnects == 1, timeout=5)
    messages, usage = eventually(lambda: (lambda s: s if len(s[1]) == 1 else None)(stored(upstream_server, "s-raw")))
    assert [m["status"] for m in messages] == ["incomplete", "incomplete"]
    assert usage[0]["outcome"] == "partial"


def test_a_stream_counts_as_active_while_it_is_written(upstream_server: Served, upstream: FakeUpstream) -> None:
    admin_key = manage("create_api_key", "--name", "ops", "--scopes", "admin", env=upstream_server.env).split()[-1]

    def active() -> float:
        text = httpx.get(f"{upstream_server.base_url}/metrics", headers={"Authorization": f"Bearer {admin_key}"}).text
        return metric(text, "llmserver_active_streams")

    upstream.enqueue(Behaviour(reply=LONG_REPLY, word_delay=0.05))
    idle = active()
    with httpx.stream("POST", f"{upstream_server.base_url}/api/v1/chat", headers=upstream_server.headers(),
                      json={"user_message": "Talk slowly", "stream": True}, timeout=30) as response:
        events = parse_events(response.iter_lines())
        assert next(events)[0] == "delta"
        during = active()
        assert [name for name, _ in events][-1] == "done"

    assert (idle, during) == (0, 1)
    assert eventually(lambda: active() == 0)
