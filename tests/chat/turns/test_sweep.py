"""A turn whose process went away (a restart, a crash, a database lost mid-turn) leaves its usage
record in flight, its question pending and its session leased; the sweep closes it once its
heartbeat is older than CHAT_TURN_LEASE_SECONDS, with the tokens known by then, and counts it in the
roll-ups and the key's limits."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.utils import timezone

from chat.models import ApiKey, ChatSession, LimitCounter, Message, UsageDaily, UsageRecord
from chat.providers import Completion
from chat.turns.end import chat_turn_complete, chat_turn_renew
from chat.turns.inputs import ChatTurnInput, StatelessTurnInput
from chat.turns.steps import chat_turn_begin, stateless_turn_begin
from chat.turns.sweep import turns_interrupted_close
from chat.usage.services import usage_interrupt
from tests.support.personas import Persona, run_command

LEASE = 20


@pytest.fixture(autouse=True)
def lease(settings) -> None:
    settings.CHAT_TURN_LEASE_SECONDS = LEASE


def begin(persona: Persona, session_id: str = "s", **fields: object):
    return chat_turn_begin(api_key=persona.api_key, turn=ChatTurnInput(user_message="Hi", session_id=session_id, **fields))


def age(seconds: float) -> None:
    """As if every turn's last heartbeat was `seconds` ago."""
    then = timezone.now() - timedelta(seconds=seconds)
    UsageRecord.objects.filter(outcome="in_flight").update(heartbeat_at=then)
    ChatSession.objects.exclude(turn_heartbeat_at=None).update(turn_heartbeat_at=then)


def test_a_turn_writes_its_usage_record_before_its_call(alice: Persona) -> None:
    prepared = begin(alice)

    record = UsageRecord.objects.get()
    assert (record.pk, record.outcome, record.session_id, record.user_message_id) == (
        prepared.usage_record.pk, "in_flight", prepared.session_pk, prepared.user_message_id,
    )
    assert record.prompt_tokens == prepared.prompt.prompt_tokens and record.usage_estimated
    assert UsageDaily.objects.count() == 0  # counted when closed


def test_a_live_turn_is_left_alone(alice: Persona) -> None:
    begin(alice)
    age(LEASE - 5)

    assert turns_interrupted_close() == 0
    assert UsageRecord.objects.get().outcome == "in_flight"


def test_the_sweep_closes_a_dead_turn_and_counts_it(alice: Persona) -> None:
    ApiKey.objects.filter(pk=alice.api_key.pk).update(tokens_per_day=100_000, monthly_budget_usd=Decimal("5"))
    alice.api_key.refresh_from_db()
    prepared = begin(alice, model="gpt-4o-mini")
    age(LEASE + 1)

    assert turns_interrupted_close() == 1

    record = UsageRecord.objects.get()
    assert (record.outcome, record.error_code, record.usage_estimated) == ("interrupted", "interrupted", True)
    assert (record.prompt_tokens, record.completion_tokens) == (prepared.prompt.prompt_tokens, 0)
    assert record.cost > 0 and record.heartbeat_at is None
    assert list(Message.objects.values_list("status", "error_code")) == [("failed", "interrupted")]
    session = ChatSession.objects.get()
    assert (session.turn_started_at, session.turn_heartbeat_at) == (None, None)
    daily = UsageDaily.objects.get()
    assert (daily.requests, daily.total_tokens, daily.cost) == (1, record.total_tokens, record.cost)
    # The worst case reserved is settled to what the record counts.
    assert LimitCounter.objects.get(limit="tokens_per_day").used == record.total_tokens
    assert LimitCounter.objects.get(limit="monthly_budget").used == record.cost
    assert turns_interrupted_close() == 0  # closed once


def test_a_dead_stream_is_closed_with_what_its_heartbeat_said_it_had_written(alice: Persona) -> None:
    prepared = begin(alice)
    chat_turn_renew(turn=prepared, text_so_far="Once upon a time there was")
    age(LEASE + 1)

    turns_interrupted_close()

    record = UsageRecord.objects.get()
    assert record.completion_tokens == 6 and record.total_tokens == record.prompt_tokens + 6


def test_a_dead_stateless_call_is_closed_too(alice: Persona) -> None:
    stateless_turn_begin(api_key=alice.api_key, turn=StatelessTurnInput(messages=[{"role": "user", "content": "Hi"}]))
    age(LEASE + 1)

    assert turns_interrupted_close() == 1
    assert UsageRecord.objects.get().outcome == "interrupted"


def test_a_turn_taken_for_dead_that_lived_on_corrects_its_record(alice: Persona) -> None:
    """Its process was too busy to renew its heartbeat for a whole lease period, and the sweep
    closed it as interrupted; then its answer came: one record, with what the turn knows, and the
    roll-ups with it."""
    prepared = begin(alice)
    age(LEASE + 1)
    turns_interrupted_close()
    completion = Completion(text="Hello!", model="gpt-4o-mini", prompt_tokens=9, completion_tokens=2,
                            usage_estimated=False, finish_reason="stop")

    chat_turn_complete(turn=prepared, completion=completion, latency_ms=30_000)

    record = UsageRecord.objects.get()
    assert (record.outcome, record.prompt_tokens, record.completion_tokens) == ("success", 9, 2)
    # The interrupted record's day and model (offline, here) gave it back; the answer's holds it.
    assert {(d.model, d.requests, d.prompt_tokens, d.completion_tokens) for d in UsageDaily.objects.all()} == {
        ("offline", 0, 0, 0), ("gpt-4o-mini", 1, 9, 2),
    }


def test_an_end_step_run_twice_counts_once(alice: Persona) -> None:
    """An end step is tried again after a database error, even when its first run had in fact
    been committed: the second run finds the record closed and changes nothing."""
    prepared = begin(alice)
    completion = Completion(text="Hello!", model="gpt-4o-mini", prompt_tokens=9, completion_tokens=2,
                            usage_estimated=False, finish_reason="stop")
    chat_turn_complete(turn=prepared, completion=completion, latency_ms=10)

    assert chat_turn_complete(turn=prepared, completion=completion, latency_ms=10) is None

    assert Message.objects.count() == 2 and UsageRecord.objects.count() == 1
    assert ChatSession.objects.get().prompt_tokens_total == 9
    assert UsageDaily.objects.get().requests == 1


def test_an_end_at_shutdown_run_twice_counts_once_too(alice: Persona) -> None:
    """The end of a stream cut by the server's shutdown closes its record as interrupted itself:
    run again, it must not take its own record for one the sweep closed, and correct it."""
    prepared = begin(alice)
    partial = Completion(text="Hel", model="gpt-4o-mini", prompt_tokens=9, completion_tokens=1,
                         usage_estimated=True, finish_reason=None)
    for _ in range(2):
        chat_turn_complete(turn=prepared, completion=partial, latency_ms=10, cut_short_by="server_shutdown",
                           outcome="interrupted")

    assert Message.objects.filter(role="assistant").count() == 1
    assert UsageRecord.objects.get().error_code == "server_shutdown"
    assert ChatSession.objects.get().prompt_tokens_total == 9
    assert UsageDaily.objects.get().requests == 1


def test_the_command_closes_dead_turns_now(alice: Persona) -> None:
    begin(alice)
    age(LEASE + 1)

    assert run_command("close_interrupted_turns") == [f"Closed 1 interrupted turn(s) (no heartbeat for {LEASE} s)."]
    assert UsageRecord.objects.get().outcome == "interrupted"
    call_command("close_interrupted_turns")  # nothing left: says 0


def test_two_sweeps_of_the_same_dead_turn_count_it_once(alice: Persona) -> None:
    """Two processes (or instances) sweeping at once both read the dead record; the second to
    close it finds it closed, and adds nothing to the totals."""
    begin(alice)
    age(LEASE + 1)
    read_by_the_other_sweep = UsageRecord.objects.get()

    assert turns_interrupted_close() == 1
    now = timezone.now()
    assert not usage_interrupt(record=read_by_the_other_sweep, now=now, dead_before=now - timedelta(seconds=LEASE))

    record = UsageRecord.objects.get()
    assert UsageDaily.objects.get().requests == 1
    assert UsageDaily.objects.get().total_tokens == record.total_tokens
    assert ChatSession.objects.get().prompt_tokens_total == record.prompt_tokens


def test_the_sweep_fails_only_the_dead_turns_messages_not_those_of_the_turn_that_took_its_lease(
    alice: Persona,
) -> None:
    first = chat_turn_begin(api_key=alice.api_key, turn=ChatTurnInput(session_id="sw", user_message="first question"))
    dead = timezone.now() - timedelta(seconds=600)
    UsageRecord.objects.filter(pk=first.usage_record.pk).update(heartbeat_at=dead)
    ChatSession.objects.filter(pk=first.session_pk).update(turn_heartbeat_at=dead, turn_started_at=dead)
    # Another turn takes the dead lease before the sweep runs, and waits on upstream.
    chat_turn_begin(api_key=alice.api_key, turn=ChatTurnInput(session_id="sw", user_message="second question"))

    assert turns_interrupted_close() == 1

    assert list(Message.objects.order_by("id").values_list("content", "status")) == [
        ("first question", "failed"), ("second question", "pending"),
    ]
