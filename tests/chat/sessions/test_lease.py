"""A session's turn lease: renewed while its turn runs, free once its holder stops renewing it."""

from datetime import timedelta

import pytest
from django.utils import timezone

from chat.exceptions import SessionBusy
from chat.models import ChatSession
from chat.sessions import lease
from chat.turns.end import chat_turn_renew
from chat.turns.inputs import ChatTurnInput
from chat.turns.steps import chat_turn_begin
from tests.support.personas import Persona


def begin(persona: Persona, message: str = "Hi"):
    return chat_turn_begin(api_key=persona.api_key, turn=ChatTurnInput(user_message=message, session_id="s"))


def test_a_turn_renews_its_lease_and_a_renewed_lease_stays_held(alice: Persona, settings) -> None:
    settings.CHAT_TURN_LEASE_SECONDS = 20
    prepared = begin(alice)
    ChatSession.objects.update(turn_heartbeat_at=timezone.now() - timedelta(seconds=15))

    assert chat_turn_renew(turn=prepared)

    assert timezone.now() - ChatSession.objects.get().turn_heartbeat_at < timedelta(seconds=1)
    with pytest.raises(SessionBusy):
        begin(alice, "Again")


def test_a_lease_taken_for_dead_is_not_renewed_by_its_old_holder(alice: Persona, settings) -> None:
    settings.CHAT_TURN_LEASE_SECONDS = 20
    first = begin(alice)
    ChatSession.objects.update(turn_heartbeat_at=timezone.now() - timedelta(seconds=21))
    second = begin(alice, "Again")

    assert not chat_turn_renew(turn=first)

    assert ChatSession.objects.get().turn_started_at == second.lease_started_at


def test_the_heartbeat_comes_three_times_a_lease_period(settings) -> None:
    settings.CHAT_TURN_LEASE_SECONDS = 30

    assert lease.heartbeat_interval_seconds() == 10
    assert lease.longest_turn().total_seconds() > lease.upstream_deadline_seconds()
