"""Limits that hold: requests per minute, tokens per day, monthly budget — reserved worst case
first, settled to what was used."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from chat.models import ApiKey, LimitCounter, Message, UsageRecord
from tests.support.clock import wait_for_a_fresh_minute
from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.personas import Persona, run_command


def set_limits(persona: Persona, **limits: object) -> None:
    ApiKey.objects.filter(pk=persona.api_key.pk).update(**limits)


def chat(persona: Persona, **body: object):
    return persona.client.post("/api/v1/chat", {"user_message": "hi", **body}, format="json")


def used(limit: str) -> Decimal:
    return LimitCounter.objects.get(limit=limit).used


def test_requests_per_minute_refuse_the_next_request_with_429(alice: Persona, fake_upstream: FakeUpstream) -> None:
    wait_for_a_fresh_minute()
    set_limits(alice, requests_per_minute=2)

    statuses = [chat(alice, session_id=f"s{n}").status_code for n in range(2)]
    refused = chat(alice, session_id="s3")

    assert statuses == [200, 200]
    assert refused.status_code == 429
    body = refused.json()
    assert body["error_code"] == "limit_requests_per_minute"
    seconds = int(refused["Retry-After"])
    assert 1 <= seconds <= 60
    assert body["error_message"] == (
        f"This API key may send 2 chat requests per minute; the limit resets in {seconds} seconds."
    )
    assert body["details"]["limit"] == "requests_per_minute" and body["details"]["maximum"] == "2"
    assert len(fake_upstream.requests) == 2
    assert Message.objects.count() == 4  # two whole turns; nothing of the refused one
    assert UsageRecord.objects.count() == 2


def test_tokens_per_day_reserve_the_worst_case_and_settle_to_what_was_used(
    alice: Persona, fake_upstream: FakeUpstream
) -> None:
    set_limits(alice, tokens_per_day=500)
    fake_upstream.enqueue(Behaviour(usage=(20, 5)))

    too_big = chat(alice, max_tokens=1000)
    fits = chat(alice, max_tokens=100)

    assert too_big.status_code == 429
    assert too_big.json()["error_code"] == "limit_tokens_per_day"
    assert too_big.json()["error_message"].startswith(
        "This API key may use 500 tokens per day (UTC), and this request could need "
    )
    assert fits.status_code == 200
    assert used("tokens_per_day") == 25
    assert fake_upstream.requests and len(fake_upstream.requests) == 1


def test_a_monthly_budget_counts_cost_and_settles_it(alice: Persona, fake_upstream: FakeUpstream) -> None:
    set_limits(alice, monthly_budget_usd=Decimal("0.01"))
    fake_upstream.enqueue(Behaviour(usage=(1000, 1000)))

    # gpt-4o-mini: 15,000 completion tokens at $0.60 per million is $0.009 of worst case; after
    # the first call's $0.00075, 16,384 (the model's most, $0.0098) would pass the budget.
    response = chat(alice, max_tokens=15_000)
    second = chat(alice, max_tokens=16_384)

    assert response.status_code == 200
    assert used("monthly_budget") == UsageRecord.objects.get().cost == Decimal("0.00075000")
    assert second.status_code == 429
    assert second.json()["error_code"] == "limit_monthly_budget"
    assert "monthly budget of $0.01 would be passed" in second.json()["error_message"]


def test_a_failed_call_gives_back_its_reserved_tokens(alice: Persona, fake_upstream: FakeUpstream) -> None:
    set_limits(alice, tokens_per_day=5000, requests_per_minute=100)
    fake_upstream.enqueue(Behaviour(status=500))

    assert chat(alice).status_code == 502

    assert used("tokens_per_day") == 0
    assert used("requests_per_minute") == 1


def test_server_defaults_apply_unless_the_key_sets_its_own(alice: Persona, bob: Persona, settings) -> None:
    settings.LIMIT_TOKENS_PER_DAY = 10
    set_limits(bob, tokens_per_day=0)  # 0: unlimited for bob

    assert chat(alice).json()["error_code"] == "limit_tokens_per_day"
    assert chat(bob).status_code == 200


def test_limits_are_set_by_the_key_commands(alice: Persona) -> None:
    created = run_command("create_api_key", "--name", "metered", "--rpm", "30", "--tokens-per-day", "100000",
                          "--monthly-budget", "12.5")
    updated = run_command("update_api_key", alice.api_key.key_id, "--rpm", "5", "--monthly-budget", "0")

    metered = ApiKey.objects.get(name="metered")
    assert (metered.requests_per_minute, metered.tokens_per_day, metered.monthly_budget_usd) == (
        30, 100_000, Decimal("12.50"),
    )
    alice.api_key.refresh_from_db()
    assert (alice.api_key.requests_per_minute, alice.api_key.monthly_budget_usd) == (5, Decimal("0"))
    assert created[-1].startswith("llms_")
    assert updated == [f"Updated API key {alice.api_key.key_id} ('alice's app'): monthly_budget_usd, requests_per_minute."]
    assert alice.api_key.events.last().note == "monthly_budget_usd, requests_per_minute"


@pytest.mark.parametrize("budget", ["lots", "-1", "nan"])
def test_a_bad_budget_is_one_clear_sentence(alice: Persona, budget: str) -> None:
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="--monthly-budget must be an amount in USD, e.g. 25 or 12.50."):
        run_command("update_api_key", alice.api_key.key_id, "--monthly-budget", budget)


def test_a_new_window_replaces_the_ended_one(alice: Persona, fake_upstream: FakeUpstream) -> None:
    set_limits(alice, requests_per_minute=100)
    chat(alice, session_id="a")
    LimitCounter.objects.update(window_start=timezone.now() - timedelta(minutes=5))

    chat(alice, session_id="b")

    assert list(LimitCounter.objects.values_list("used", flat=True)) == [Decimal(1)]


def test_a_key_without_limits_costs_no_limit_or_price_query(alice: Persona, fake_upstream: FakeUpstream) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        assert chat(alice).status_code == 200

    statements = [q["sql"] for q in queries.captured_queries]
    assert not [sql for sql in statements if "chat_limitcounter" in sql]
    assert len([sql for sql in statements if "chat_modelprice" in sql]) == 1  # the usage record's cost only


@pytest.mark.parametrize("model", ["chatgpt-4o-latest", "GPT-4O", "llama3.1:8b"])
def test_a_key_with_a_budget_may_not_use_a_model_without_a_price(
    alice: Persona, fake_upstream: FakeUpstream, model: str
) -> None:
    """A model with no price would cost nothing and never be stopped: the budget fails closed."""
    set_limits(alice, monthly_budget_usd=Decimal("0.01"))

    response = chat(alice, model=model)

    assert (response.status_code, response.json()["error_code"]) == (403, "model_not_priced")
    assert response.json()["error_message"] == (
        f"This API key has a monthly budget of $0.01, and the model {model} has no price, so its cost could not be "
        "counted; use a model with a price, or ask the operator to price it."
    )
    assert fake_upstream.requests == []
    assert (Message.objects.count(), UsageRecord.objects.count()) == (0, 0)


def test_the_server_default_budget_fails_closed_too(alice: Persona, fake_upstream: FakeUpstream, settings) -> None:
    settings.LIMIT_MONTHLY_BUDGET_USD = 5.0

    assert chat(alice, model="my-local-model").json()["error_code"] == "model_not_priced"
    assert chat(alice, model="gpt-4o-mini").status_code == 200


def test_with_a_price_for_unpriced_models_a_budget_counts_them_at_that_price(
    alice: Persona, fake_upstream: FakeUpstream, settings
) -> None:
    settings.UNPRICED_MODEL_INPUT_PER_MILLION = Decimal("1")
    settings.UNPRICED_MODEL_OUTPUT_PER_MILLION = Decimal("2")
    set_limits(alice, monthly_budget_usd=Decimal("0.01"))
    fake_upstream.enqueue(Behaviour(usage=(1000, 500)))

    assert chat(alice, model="my-local-model", max_tokens=100).status_code == 200

    assert UsageRecord.objects.get().cost == Decimal("0.002") == used("monthly_budget")


def test_a_call_upstream_reports_under_an_unpriced_name_costs_the_price_of_the_model_asked_for(
    alice: Persona, fake_upstream: FakeUpstream
) -> None:
    """OpenAI answers gpt-4o-mini as gpt-4o-mini-2024-07-18 (priced by its prefix); a proxy may
    answer it under a name of its own, with no price: the turn's model is priced instead of 0."""
    set_limits(alice, monthly_budget_usd=Decimal("1"))
    fake_upstream.enqueue(Behaviour(body={
        "id": "x", "object": "chat.completion", "model": "my-proxy/mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1_000_000, "completion_tokens": 0, "total_tokens": 1_000_000},
    }))

    response = chat(alice, model="gpt-4o-mini")

    assert response.status_code == 200
    record = UsageRecord.objects.get()
    assert (record.model, record.cost) == ("my-proxy/mini", Decimal("0.15"))  # gpt-4o-mini's $0.15 per million in
    assert used("monthly_budget") == Decimal("0.15")


def test_a_budget_keeps_its_precision(alice: Persona) -> None:
    run_command("update_api_key", alice.api_key.key_id, "--monthly-budget", "0.001")

    alice.api_key.refresh_from_db()
    assert alice.api_key.monthly_budget_usd == Decimal("0.001")


@pytest.mark.parametrize(("option", "value", "sentence"), [
    ("--monthly-budget", "1e20", "monthly_budget_usd must be from 0 to 1000000000."),
    ("--monthly-budget", "0.000000001", "monthly_budget_usd has at most 8 decimal places (a hundred-millionth of a dollar)."),
    ("--tokens-per-day", "99999999999999999999", "tokens_per_day must be from 0 to 1000000000000000."),
    ("--rpm", "99999999999", "requests_per_minute must be from 0 to 1000000."),
])
def test_a_limit_past_its_bound_is_one_clear_sentence(alice: Persona, option: str, value: str, sentence: str) -> None:
    from django.core.management import CommandError

    with pytest.raises(CommandError) as refused:
        run_command("update_api_key", alice.api_key.key_id, option, value)

    assert str(refused.value) == sentence
    assert ApiKey.objects.get().monthly_budget_usd is None
