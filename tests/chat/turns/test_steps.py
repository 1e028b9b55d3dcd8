"""The chat turn's steps, called directly: the most important tests (services are what the
project's rules, docs/architecture.md, say to test first)."""

import asyncio
import logging
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from chat.exceptions import (
    ModelNotAllowed,
    ModelNotAvailable,
    SessionBusy,
    SessionNotFound,
    UpstreamError,
    UpstreamTimeout,
)
from chat.keys.services import api_key_create
from chat.models import ChatSession, Message, UpstreamCredential, UsageRecord
from chat.providers import get_provider
from chat.providers.base import Completion
from chat.sessions import lease
from chat.tokens import count_message_tokens
from chat.turns import sql
from chat.turns.end import chat_turn_complete, chat_turn_fail
from chat.turns.inputs import ChatTurnInput
from chat.turns.run import chat_turn_run
from chat.turns.steps import chat_turn_begin
from chat.upstreams.choice import UpstreamChoice
from chat.upstreams.selectors import model_check, models_usable_by
from chat.upstreams.services import upstream_credential_save
from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.personas import Persona

COMPLETION = Completion(
    text="Hello!", model="gpt-4o-2024-08-06", prompt_tokens=9, completion_tokens=2, usage_estimated=False,
    finish_reason="stop",
)


def default_upstream() -> UpstreamChoice:
    return UpstreamChoice(provider=get_provider(), key_source="default")


def run_turn(persona: Persona, **fields: object):
    return async_to_sync(chat_turn_run)(
        api_key=persona.api_key, upstream=default_upstream(), turn=ChatTurnInput(**fields)
    )


def test_begin_stores_the_question_as_pending_and_takes_the_lease(alice: Persona) -> None:
    prepared = chat_turn_begin(api_key=alice.api_key, turn=ChatTurnInput(user_message="Hi", session_id="s"))

    message = Message.objects.get()
    assert (message.pk, message.status, message.content) == (prepared.user_message_id, "pending", "Hi")
    # Counted once, by the prompt, and stored as counted.
    assert message.token_count == count_message_tokens(role="user", content="Hi", model=prepared.model) > 0
    assert ChatSession.objects.get().turn_started_at is not None
    with pytest.raises(SessionBusy):
        chat_turn_begin(api_key=alice.api_key, turn=ChatTurnInput(user_message="Again", session_id="s"))
    assert Message.objects.count() == 1


def test_a_model_the_key_may_not_use_is_refused_as_such_even_while_the_session_is_busy(db: None) -> None:
    api_key, _ = api_key_create(name="narrow", actor="test", allowed_models=["gpt-4o-mini"])
    chat_turn_begin(api_key=api_key, turn=ChatTurnInput(user_message="Hi", session_id="s", model="gpt-4o-mini"))

    with pytest.raises(ModelNotAllowed):
        chat_turn_begin(api_key=api_key, turn=ChatTurnInput(user_message="Again", session_id="s", model="gpt-4o"))
    with pytest.raises(SessionBusy):
        chat_turn_begin(api_key=api_key, turn=ChatTurnInput(user_message="Again", session_id="s"))
    assert Message.objects.count() == 1


def test_a_leased_session_saved_whole_keeps_the_fields_the_lease_did_not_read(alice: Persona) -> None:
    stored = ChatSession.objects.create(api_key=alice.api_key, public_id="s", model="m", prompt_tokens_total=4)
    now = timezone.now()
    leased = sql.session_lease(api_key_id=alice.api_key.pk, public_id="s", now=now, dead_before=now)

    leased.title = "Renamed"
    leased.save()

    stored.refresh_from_db()
    assert (stored.title, stored.prompt_tokens_total, stored.turn_started_at) == ("Renamed", 4, now)


def test_complete_stores_answer_usage_and_totals_and_releases_the_lease(alice: Persona) -> None:
    prepared = chat_turn_begin(api_key=alice.api_key, turn=ChatTurnInput(user_message="Hi", session_id="s"))
    completion = Completion(
        text="Hello!", model="gpt-4o-2024-08-06", prompt_tokens=9, completion_tokens=2, usage_estimated=False,
        finish_reason="stop",
    )

    answer = chat_turn_complete(turn=prepared, completion=completion, latency_ms=120)

    assert list(Message.objects.order_by("id").values_list("role", "status")) == [
        ("user", "complete"), ("assistant", "complete"),
    ]
    assert (answer.model, answer.prompt_tokens, answer.completion_tokens, answer.latency_ms) == (
        "gpt-4o-2024-08-06", 9, 2, 120,
    )
    session = ChatSession.objects.get()
    assert (session.prompt_tokens_total, session.completion_tokens_total, session.turn_started_at) == (9, 2, None)
    usage = UsageRecord.objects.get()
    assert (usage.total_tokens, usage.latency_ms, usage.outcome, usage.usage_estimated) == (11, 120, "success", False)


def test_fail_keeps_the_question_invents_no_answer_and_releases_the_lease(alice: Persona) -> None:
    prepared = chat_turn_begin(api_key=alice.api_key, turn=ChatTurnInput(user_message="Hi", session_id="s"))

    chat_turn_fail(turn=prepared, error_code="upstream_timeout", latency_ms=5000)

    assert list(Message.objects.values_list("role", "status", "error_code")) == [
        ("user", "failed", "upstream_timeout"),
    ]
    assert ChatSession.objects.get().turn_started_at is None
    assert list(UsageRecord.objects.values_list("outcome", "total_tokens", "latency_ms")) == [
        ("failed", 0, 5000),
    ]


def test_a_client_that_goes_away_mid_turn_leaves_the_question_failed_and_the_session_free(
    alice: Persona, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.enqueue(Behaviour(hang=True))

    async def disconnect_while_waiting() -> None:
        task = asyncio.create_task(
            chat_turn_run(
                api_key=alice.api_key, upstream=default_upstream(),
                turn=ChatTurnInput(user_message="Hi", session_id="s"),
            )
        )
        for _ in range(200):
            if fake_upstream.active_requests:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async_to_sync(disconnect_while_waiting)()

    assert list(Message.objects.values_list("status", "error_code")) == [("failed", "client_disconnected")]
    assert ChatSession.objects.get().turn_started_at is None
    assert UsageRecord.objects.get().outcome == "failed"


def test_it_logs_start_and_end_with_session_and_tokens_but_never_the_contents(
    alice: Persona, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    fake_upstream.enqueue(Behaviour(reply="The secret answer", usage=(11, 3)))
    caplog.set_level(logging.DEBUG)

    run_turn(alice, user_message="My secret question", session_id="logged", system_prompt="Secret persona")

    chat_lines = [r.getMessage() for r in caplog.records if r.name == "chat.turns"]
    assert chat_lines[0].startswith("chat start session=logged key=")
    assert chat_lines[1].startswith("chat end session=logged tokens=14 prompt_tokens=11 completion_tokens=3 ")
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("My secret question", "The secret answer", "Secret persona", alice.raw_key):
        assert secret not in everything


def test_it_logs_a_failure_with_its_error_code(
    alice: Persona, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    fake_upstream.enqueue(Behaviour(status=503))

    with pytest.raises(UpstreamError):
        run_turn(alice, user_message="Hi", session_id="s")

    assert any(
        r.levelname == "WARNING" and r.getMessage().startswith("chat failed session=s error=upstream_error ")
        for r in caplog.records
    )


def test_deleting_a_session_while_a_turn_is_in_flight_is_refused(alice: Persona) -> None:
    chat_turn_begin(api_key=alice.api_key, turn=ChatTurnInput(user_message="Hi", session_id="s"))

    response = alice.client.delete("/api/v1/sessions/s")

    assert (response.status_code, response.json()["error_code"]) == (409, "session_busy")
    assert Message.objects.count() == 1


def test_an_answer_for_a_session_deleted_meanwhile_is_still_billed(alice: Persona) -> None:
    prepared = chat_turn_begin(api_key=alice.api_key, turn=ChatTurnInput(user_message="Hi", session_id="s"))
    ChatSession.objects.all().delete()  # as after the lease ran out and someone deleted it

    with pytest.raises(SessionNotFound):
        chat_turn_complete(turn=prepared, completion=COMPLETION, latency_ms=10)

    assert list(UsageRecord.objects.values_list("session", "total_tokens", "outcome")) == [(None, 11, "success")]


def test_a_turn_that_outlived_its_lease_does_not_release_the_next_turns_lease(alice: Persona) -> None:
    first = chat_turn_begin(api_key=alice.api_key, turn=ChatTurnInput(user_message="One", session_id="s"))
    ChatSession.objects.update(turn_heartbeat_at=timezone.now() - timedelta(hours=1))
    second = chat_turn_begin(api_key=alice.api_key, turn=ChatTurnInput(user_message="Two", session_id="s"))

    chat_turn_complete(turn=first, completion=COMPLETION, latency_ms=10)

    assert ChatSession.objects.get().turn_started_at == second.lease_started_at
    with pytest.raises(SessionBusy):
        chat_turn_begin(api_key=alice.api_key, turn=ChatTurnInput(user_message="Three", session_id="s"))


def test_a_failure_after_upstream_answered_records_the_tokens_spent(alice: Persona) -> None:
    prepared = chat_turn_begin(api_key=alice.api_key, turn=ChatTurnInput(user_message="Hi", session_id="s"))

    chat_turn_fail(turn=prepared, error_code="internal_error", latency_ms=10, completion=COMPLETION)

    assert list(UsageRecord.objects.values_list("outcome", "prompt_tokens", "completion_tokens")) == [
        ("failed", 9, 2),
    ]
    assert Message.objects.get().status == "failed"


def test_upstream_retries_are_cut_at_the_turns_deadline(
    alice: Persona, fake_upstream: FakeUpstream, settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry waits out upstream's Retry-After (5 s here); the turn ends at its deadline instead
    (1.5 s here), well inside the session's lease."""
    settings.LLM_TIMEOUT_SECONDS = 0.5
    settings.LLM_MAX_RETRIES = 1
    monkeypatch.setattr(lease, "RETRY_WAIT_ALLOWANCE_SECONDS", 0.5)
    fake_upstream.enqueue(Behaviour(status=429, headers={"retry-after": "5"}))

    with pytest.raises(UpstreamTimeout):
        run_turn(alice, user_message="Hi", session_id="s")

    assert Message.objects.get().error_code == "upstream_timeout"
    assert lease.longest_turn().total_seconds() > lease.upstream_deadline_seconds()


def test_the_models_a_key_is_listed_are_the_models_it_may_use(db: None) -> None:
    """/v1/models (models_usable_by) and the turn's model check (model_check) agree: an allow-list
    is narrowed to what the key's upstream credential serves."""
    credential = upstream_credential_save(
        credential=UpstreamCredential(name="team", base_url="", served_models=["gpt-4o", "gpt-4o-mini"]),
        plaintext_key="sk-team-key-for-tests",
    )
    narrowed, _ = api_key_create(name="a", actor="test", allowed_models=["gpt-4o", "o3"], upstream_credential=credential)
    served_only, _ = api_key_create(name="b", actor="test", upstream_credential=credential)
    plain, _ = api_key_create(name="c", actor="test")

    assert models_usable_by(narrowed) == ["gpt-4o"]
    assert models_usable_by(served_only) == ["gpt-4o", "gpt-4o-mini"]
    assert models_usable_by(plain) == ["offline"]
    model_check(api_key=narrowed, model="gpt-4o", key_source="default")
    with pytest.raises(ModelNotAvailable):
        model_check(api_key=narrowed, model="o3", key_source="default")
    with pytest.raises(ModelNotAllowed):
        model_check(api_key=narrowed, model="gpt-4o-mini", key_source="default")


def test_a_client_gone_while_its_question_is_stored_leaves_no_usage_record(
    alice: Persona, fake_upstream: FakeUpstream
) -> None:
    """No call was made, so there is no record of one (there used to be a failed one, so that the
    records outnumbered the calls)."""

    async def leave_at_once() -> None:
        task = asyncio.create_task(
            chat_turn_run(api_key=alice.api_key, upstream=default_upstream(),
                          turn=ChatTurnInput(user_message="Hi", session_id="s"))
        )
        await asyncio.sleep(0)  # the first step has started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async_to_sync(leave_at_once)()

    assert fake_upstream.requests == []
    assert UsageRecord.objects.count() == 0
    assert list(Message.objects.values_list("status", "error_code")) == [("failed", "client_disconnected")]
    assert ChatSession.objects.get().turn_started_at is None


def test_a_key_out_of_tokens_is_refused_before_the_history_is_read(alice: Persona, fake_upstream: FakeUpstream) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from chat.models import ApiKey

    run_turn(alice, user_message="Hi", session_id="s")
    ApiKey.objects.filter(pk=alice.api_key.pk).update(tokens_per_day=10)
    alice.api_key.refresh_from_db()

    with CaptureQueriesContext(connection) as queries, pytest.raises(Exception) as refused:
        run_turn(alice, user_message="Hi again", session_id="s")

    assert getattr(refused.value, "error_code", "") == "limit_tokens_per_day"
    history_reads = [q["sql"] for q in queries.captured_queries if "FROM" in q["sql"] and "chat_message" in q["sql"]
                     and "ORDER BY" in q["sql"]]
    assert history_reads == []


def test_history_counted_again_under_another_model_is_stored_as_counted(alice: Persona, fake_upstream: FakeUpstream) -> None:
    run_turn(alice, user_message="Hello there", session_id="s", model="gpt-4")  # cl100k_base
    assert set(Message.objects.values_list("token_encoding", flat=True)) == {"cl100k_base"}

    run_turn(alice, user_message="And now?", session_id="s", model="gpt-4o")  # o200k_base

    first_turn = Message.objects.order_by("id")[:2]
    assert {m.token_encoding for m in first_turn} == {"o200k_base"}
    assert [m.token_count for m in first_turn] == [
        count_message_tokens(role=m.role, content=m.content, model="gpt-4o") for m in first_turn
    ]
