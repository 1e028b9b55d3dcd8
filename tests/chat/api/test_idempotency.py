"""`Idempotency-Key` on POST /api/v1/chat (Stripe's semantics): a retry replays, never re-runs."""

import asyncio
import json
from datetime import timedelta

import httpx
import pytest
from django.core.management import call_command
from django.utils import timezone

from chat.api.idempotency import Claim, StoredResponse, idempotency_claim, idempotency_release, idempotency_store
from chat.models import IdempotentRequest, Message, UsageRecord
from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.personas import UPSTREAM_TEST_KEY, Persona
from tests.support.served import Served, parse_events

BODY = {"session_id": "s", "user_message": "What is 2 + 2?"}


def chat(persona: Persona, key: str, body: dict = BODY):
    return persona.client.post(
        "/api/v1/chat", data=json.dumps(body), content_type="application/json", HTTP_IDEMPOTENCY_KEY=key
    )


def test_the_same_key_and_body_replay_the_answer_without_a_second_turn(
    alice: Persona, fake_upstream: FakeUpstream
) -> None:
    first = chat(alice, "order-1")
    # Key order and spacing do not make another request.
    again = alice.client.post(
        "/api/v1/chat", data='{"user_message":"What is 2 + 2?",  "session_id":"s"}',
        content_type="application/json", HTTP_IDEMPOTENCY_KEY="order-1",
    )

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert (first.headers.get("Idempotent-Replayed"), again["Idempotent-Replayed"]) == (None, "true")
    assert len(fake_upstream.requests) == 1
    assert (Message.objects.count(), UsageRecord.objects.count()) == (2, 1)


def test_the_same_key_with_another_body_is_a_422_and_runs_nothing(
    alice: Persona, fake_upstream: FakeUpstream
) -> None:
    chat(alice, "order-1")

    response = chat(alice, "order-1", {**BODY, "user_message": "And 3 + 3?"})

    assert response.status_code == 422
    assert response.json()["error_code"] == "idempotency_key_reused"
    assert len(fake_upstream.requests) == 1
    assert Message.objects.count() == 2


def test_properties_the_contract_does_not_have_do_not_make_another_request(
    alice: Persona, fake_upstream: FakeUpstream
) -> None:
    """The turn ignores them, so the key's check does too (they used to make a 422)."""
    first = chat(alice, "order-1")

    again = chat(alice, "order-1", {**BODY, "client_trace": "abc", "retry": 2})

    assert (again.status_code, again["Idempotent-Replayed"]) == (200, "true")
    assert again.json() == first.json()
    assert len(fake_upstream.requests) == 1


def test_keys_belong_to_the_client_key_that_sent_them(
    alice: Persona, bob: Persona, fake_upstream: FakeUpstream
) -> None:
    chat(alice, "order-1")

    response = chat(bob, "order-1")

    assert response.status_code == 200 and "Idempotent-Replayed" not in response
    assert len(fake_upstream.requests) == 2


def test_a_key_is_kept_for_24_hours_then_runs_again_and_is_pruned(
    alice: Persona, fake_upstream: FakeUpstream
) -> None:
    chat(alice, "order-1")
    IdempotentRequest.objects.update(created_at=timezone.now() - timedelta(hours=23, minutes=59))
    assert chat(alice, "order-1")["Idempotent-Replayed"] == "true"

    IdempotentRequest.objects.update(created_at=timezone.now() - timedelta(hours=24, seconds=1))
    rerun = chat(alice, "order-1")
    assert rerun.status_code == 200 and "Idempotent-Replayed" not in rerun
    assert len(fake_upstream.requests) == 2

    IdempotentRequest.objects.update(created_at=timezone.now() - timedelta(hours=25))
    call_command("prune_idempotency_keys", stdout=open("/dev/null", "w"))
    assert not IdempotentRequest.objects.exists()


def test_an_upstream_failure_is_stored_and_replayed_like_an_answer(
    alice: Persona, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.enqueue(Behaviour(status=503))

    first = chat(alice, "order-1")
    again = chat(alice, "order-1")

    assert first.status_code == again.status_code == 502
    assert again.json() == first.json()
    assert again.json()["error_code"] == "upstream_error"
    assert len(fake_upstream.requests) == 1
    assert UsageRecord.objects.count() == 1


@pytest.mark.parametrize(
    ("refusal", "status"),
    [(Behaviour(status=429, headers={"retry-after": "30"}), 429), (Behaviour(status=401), 502),
     (Behaviour(status=404), 404)],
    ids=["rate_limited", "key_rejected", "request_rejected"],
)
def test_a_request_upstream_did_not_take_up_is_not_stored_so_the_same_key_can_ask_again(
    alice: Persona, fake_upstream: FakeUpstream, refusal: Behaviour, status: int
) -> None:
    fake_upstream.enqueue(refusal)

    refused = chat(alice, "order-1")
    again = chat(alice, "order-1")

    assert refused.status_code == status
    if "retry-after" in refusal.headers:
        assert refused["Retry-After"] == refusal.headers["retry-after"]
    assert again.status_code == 200 and "Idempotent-Replayed" not in again
    assert len(fake_upstream.requests) == 2


def test_a_holder_that_outlived_its_lock_cannot_release_or_overwrite_the_next_holders_key(alice: Persona) -> None:
    """A worker that died (or hung) past its lock: the next request takes the key over; if the
    first then wakes up, its release and its response are both ignored."""
    stale = idempotency_claim(api_key=alice.api_key, key="k", body_hash="h")
    IdempotentRequest.objects.update(locked_until=timezone.now() - timedelta(seconds=1))
    taken_over = idempotency_claim(api_key=alice.api_key, key="k", body_hash="h")
    assert isinstance(taken_over, Claim) and taken_over.row_id == stale.row_id

    idempotency_release(claim=stale)
    idempotency_store(claim=stale, status=502, body={"stale": True})
    assert idempotency_claim(api_key=alice.api_key, key="k", body_hash="h") is None  # still held

    idempotency_store(claim=taken_over, status=200, body={"fresh": True})
    assert idempotency_claim(api_key=alice.api_key, key="k", body_hash="h") == StoredResponse(200, {"fresh": True})


def test_a_request_refused_before_the_model_was_asked_leaves_the_key_free(
    alice: Persona, fake_upstream: FakeUpstream, settings
) -> None:
    settings.LLM_MAX_OUTPUT_TOKENS = {"gpt-4o-mini": 10}
    refused = chat(alice, "order-1", {**BODY, "max_tokens": 11})
    settings.LLM_MAX_OUTPUT_TOKENS = {}

    answered = chat(alice, "order-1", {**BODY, "max_tokens": 11})

    assert (refused.status_code, answered.status_code) == (400, 200)
    assert "Idempotent-Replayed" not in answered


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "ключ"])
def test_an_unusable_key_is_a_400(alice: Persona, key: str) -> None:
    response = chat(alice, key)

    assert response.status_code == 400
    assert list(response.json()["details"]) == ["Idempotency-Key"]
    assert not Message.objects.exists()


# --- Over real HTTP ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(serve, database_env: dict[str, str], fake_upstream_server: FakeUpstream) -> Served:
    return serve(OPENAI_BASE_URL=fake_upstream_server.base_url, OPENAI_API_KEY=UPSTREAM_TEST_KEY, **database_env)


def test_ten_requests_at_once_with_one_key_make_one_turn_and_get_one_answer(
    served: Served, upstream: FakeUpstream
) -> None:
    # Slow enough that all ten arrive while the first is being answered.
    upstream.enqueue(Behaviour(delay=1.0))

    async def send_ten() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served.base_url, headers=served.headers(), timeout=30) as client:
            return await asyncio.gather(*(
                client.post("/api/v1/chat", json={**BODY, "session_id": "ten"}, headers={"Idempotency-Key": "ten"})
                for _ in range(10)
            ))

    responses = asyncio.run(send_ten())

    assert [r.status_code for r in responses] == [200] * 10
    assert len({r.text for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 9
    assert len(upstream.requests) == 1
    messages = httpx.get(f"{served.base_url}/api/v1/sessions/ten/messages", headers=served.headers()).json()
    assert messages["count"] == 2
    usage = httpx.get(f"{served.base_url}/api/v1/sessions/ten/usage", headers=served.headers()).json()
    assert usage["count"] == 1


def test_a_streamed_answer_is_replayed_as_a_stream(served: Served, upstream: FakeUpstream) -> None:
    def stream() -> tuple[httpx.Response, list]:
        with httpx.stream(
            "POST", f"{served.base_url}/api/v1/chat", json={**BODY, "session_id": "streamed", "stream": True},
            headers={**served.headers(), "Idempotency-Key": "streamed"}, timeout=30,
        ) as response:
            return response, list(parse_events(response.iter_lines()))

    first, first_events = stream()
    again, again_events = stream()

    assert [name for name, _ in again_events] == ["delta", "done"]
    assert again_events[0][1]["delta"] == "".join(data["delta"] for name, data in first_events if name == "delta")
    assert again_events[-1] == first_events[-1]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(upstream.requests) == 1


def test_a_client_that_left_mid_turn_can_send_the_same_key_again(served: Served, upstream: FakeUpstream) -> None:
    """The lost request's turn ended as client_disconnected and stored no response, so the retry
    (the reason the key exists) is answered, not refused or replayed."""
    upstream.enqueue(Behaviour(hang=True))
    body = {**BODY, "session_id": "left"}
    headers = {**served.headers(), "Idempotency-Key": "left"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{served.base_url}/api/v1/chat", json=body, headers=headers, timeout=1)

    retry = None
    for _ in range(50):  # the first turn ends (and frees the key) once the server sees the disconnect
        retry = httpx.post(f"{served.base_url}/api/v1/chat", json=body, headers=headers, timeout=30)
        if retry.status_code != 409:
            break
    assert retry.status_code == 200, retry.text
    assert "Idempotent-Replayed" not in retry.headers
    statuses = [m["status"] for m in httpx.get(
        f"{served.base_url}/api/v1/sessions/left/messages", headers=served.headers()).json()["results"]]
    assert statuses == ["failed", "complete", "complete"]
