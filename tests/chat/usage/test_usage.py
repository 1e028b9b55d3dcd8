"""Usage you can trust: cost from the price table, daily roll-ups moved with every record, and
the usage API reading roll-ups only."""

from datetime import date, timedelta
from decimal import Decimal

from django.utils import timezone

from chat.keys.selectors import api_key_list
from chat.keys.services import api_key_create
from chat.models import ModelPrice, UsageDaily, UsageDailyTotal, UsageRecord
from chat.usage.services import usage_record
from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.personas import Persona, client_for, run_command


def record(persona: Persona, *, model: str = "gpt-4o-mini", prompt: int = 1000, completion: int = 500,
           outcome: str = "success") -> UsageRecord:
    return usage_record(
        api_key_id=persona.api_key.pk, session_pk=None, model=model, prompt_tokens=prompt,
        completion_tokens=completion, usage_estimated=False, key_source="default", latency_ms=5, outcome=outcome,
    )


def test_known_openai_prices_ship_as_data(db: None) -> None:
    price = ModelPrice.objects.get(model_prefix="gpt-4o-mini")

    assert (price.input_per_million, price.output_per_million) == (Decimal("0.15"), Decimal("0.6"))


def test_cost_comes_from_the_longest_matching_price(alice: Persona) -> None:
    # gpt-4o-mini: $0.15 in, $0.60 out per million. gpt-4o: $2.50 and $10.
    mini = record(alice, model="gpt-4o-mini-2024-07-18")
    full = record(alice, model="gpt-4o-2024-08-06")
    local = record(alice, model="llama3.1:8b")

    assert mini.cost == Decimal("0.00045000")  # 1000 × 0.15e-6 + 500 × 0.60e-6
    assert full.cost == Decimal("0.00750000")  # 1000 × 2.50e-6 + 500 × 10e-6
    assert local.cost == Decimal("0")


def test_a_price_prefix_matches_only_itself(alice: Persona) -> None:
    # `_` and `%` are LIKE's wildcards and SQLite's LIKE ignores case: neither may widen a prefix.
    ModelPrice.objects.create(model_prefix="my_model", input_per_million=Decimal("1"), output_per_million=Decimal("1"))
    ModelPrice.objects.create(model_prefix="100%", input_per_million=Decimal("2"), output_per_million=Decimal("2"))

    assert record(alice, model="my_model-v2").cost == Decimal("0.00150000")
    assert record(alice, model="myXmodel-v2").cost == Decimal("0")
    assert record(alice, model="MY_MODEL-v2").cost == Decimal("0")
    assert record(alice, model="100%-sure").cost == Decimal("0.00300000")
    assert record(alice, model="1000-sure").cost == Decimal("0")


def test_a_changed_price_applies_to_later_calls_only(alice: Persona) -> None:
    before = record(alice)
    ModelPrice.objects.filter(model_prefix="gpt-4o-mini").update(input_per_million=Decimal("1"))

    after = record(alice)

    before.refresh_from_db()
    assert (before.cost, after.cost) == (Decimal("0.00045000"), Decimal("0.00130000"))


def test_each_record_moves_its_days_roll_up_in_the_same_write(alice: Persona) -> None:
    record(alice)
    record(alice, prompt=10, completion=5)
    record(alice, model="gpt-4o", prompt=1, completion=1, outcome="failed")

    rows = list(UsageDaily.objects.order_by("model").values_list(
        "model", "day", "requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost"))
    today = timezone.now().date()
    assert rows == [
        ("gpt-4o", today, 1, 1, 1, 2, Decimal("0.00001250")),
        ("gpt-4o-mini", today, 2, 1010, 505, 1515, Decimal("0.00045450")),
    ]


def test_a_chat_is_recorded_with_its_cost_and_rolled_up(alice: Persona, fake_upstream: FakeUpstream) -> None:
    fake_upstream.enqueue(Behaviour(usage=(2000, 1000)))

    alice.client.post("/api/v1/chat", {"user_message": "Hi"}, format="json")

    assert UsageRecord.objects.get().cost == Decimal("0.00090000")
    assert UsageDaily.objects.get().cost == Decimal("0.00090000")


def test_the_usage_api_reports_your_usage_by_day_model_or_key(alice: Persona, bob: Persona) -> None:
    record(alice)
    record(alice, model="gpt-4o")
    record(bob, prompt=7, completion=7)
    today = timezone.now().date().isoformat()

    by_model = alice.client.get("/api/v1/usage", {"group_by": "model"}).json()
    by_day = alice.client.get("/api/v1/usage").json()

    assert by_model["totals"] == {
        "requests": 2, "prompt_tokens": 2000, "completion_tokens": 1000, "total_tokens": 3000, "cost": "0.00795000",
    }
    assert [(g["model"], g["requests"], g["cost"]) for g in by_model["groups"]] == [
        ("gpt-4o", 1, "0.00750000"), ("gpt-4o-mini", 1, "0.00045000"),
    ]
    assert [(g["day"], g["total_tokens"]) for g in by_day["groups"]] == [(today, 3000)]
    assert by_day["group_by"] == "day"
    assert by_day["to"] == today


def test_an_admin_key_sees_every_key_and_can_pick_one(alice: Persona, bob: Persona) -> None:
    record(alice)
    record(bob, prompt=7, completion=7)
    _, admin_raw = api_key_create(name="ops", actor="test", scopes=["admin"])
    admin = client_for(admin_raw)

    everyone = admin.get("/api/v1/usage", {"group_by": "key"}).json()
    only_bob = admin.get("/api/v1/usage", {"key": bob.api_key.key_id}).json()

    assert [(g["key_id"], g["name"], g["total_tokens"]) for g in everyone["groups"]] == sorted(
        [(alice.api_key.key_id, "alice's app", 1500), (bob.api_key.key_id, "bob's app", 14)]
    )
    assert only_bob["totals"]["total_tokens"] == 14


def test_a_client_key_never_sees_another_keys_usage(alice: Persona, bob: Persona) -> None:
    record(alice)

    mine = bob.client.get("/api/v1/usage").json()
    theirs = bob.client.get("/api/v1/usage", {"key": alice.api_key.key_id})

    assert mine["totals"]["total_tokens"] == 0 and mine["groups"] == []
    assert (theirs.status_code, theirs.json()["error_code"]) == (403, "insufficient_scope")


def test_bad_periods_get_clear_errors(alice: Persona) -> None:
    backwards = alice.client.get("/api/v1/usage", {"from": "2026-02-01", "to": "2026-01-01"})
    too_long = alice.client.get("/api/v1/usage", {"from": "2024-01-01", "to": "2026-01-01"})
    not_a_date = alice.client.get("/api/v1/usage", {"from": "yesterday"})
    bad_group = alice.client.get("/api/v1/usage", {"group_by": "week"})

    assert backwards.json()["details"] == {"from": ["'from' must not be after 'to'."]}
    assert too_long.json()["details"] == {"from": ["A report covers at most 366 days."]}
    assert not_a_date.status_code == 400 and "from" in not_a_date.json()["details"]
    assert bad_group.json()["details"] == {"group_by": ['"week" is not a valid choice.']}


def test_the_period_is_inclusive_and_reads_roll_ups_only(alice: Persona) -> None:
    record(alice)
    UsageRecord.objects.all().delete()  # as after prune_usage: the roll-ups still answer
    today = timezone.now().date()

    inside = alice.client.get("/api/v1/usage", {"from": today.isoformat(), "to": today.isoformat()}).json()
    before = alice.client.get("/api/v1/usage", {"to": (today - timedelta(days=1)).isoformat()}).json()

    assert inside["totals"]["requests"] == 1
    assert before["totals"]["requests"] == 0
    # With only `to`, the period is the 30 days ending there.
    assert date.fromisoformat(before["from"]) == today - timedelta(days=30)


def test_usage_report_prints_a_table_per_day_and_model(alice: Persona, bob: Persona) -> None:
    record(alice)
    record(bob, model="gpt-4o")

    everyone = run_command("usage_report", "--days", "3")
    only_alice = run_command("usage_report", "--key", alice.api_key.key_id)

    today = timezone.now().date().isoformat()
    assert everyone[0].split() == ["DAY", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL", "COST", "(USD)"]
    assert [line.split() for line in everyone[1:-1]] == [
        [today, "gpt-4o", "1", "1000", "500", "1500", "0.007500"],
        [today, "gpt-4o-mini", "1", "1000", "500", "1500", "0.000450"],
        ["TOTAL", "2", "2000", "1000", "3000", "0.007950"],
    ]
    assert everyone[-1].startswith("Usage of all keys from ")
    assert only_alice[-2].split() == ["TOTAL", "1", "1000", "500", "1500", "0.000450"]


def test_prune_deletes_old_records_and_keeps_the_roll_ups(alice: Persona) -> None:
    old = record(alice)
    UsageRecord.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=100))
    record(alice)

    lines = run_command("prune_usage", "--older-than", "90")

    assert UsageRecord.objects.count() == 1
    assert UsageDaily.objects.get().requests == 2
    assert api_key_list().get().total_tokens == 3000  # key totals survive pruning too
    assert lines[0].startswith("Deleted 1 usage record(s) from before ")


def test_the_all_keys_roll_up_adds_up_every_keys(alice: Persona, bob: Persona) -> None:
    record(alice)
    record(bob)
    record(bob, model="gpt-4o")

    totals = list(UsageDailyTotal.objects.order_by("model").values_list("model", "requests", "total_tokens", "cost"))

    assert totals == [("gpt-4o", 1, 1500, Decimal("0.00750000")), ("gpt-4o-mini", 2, 3000, Decimal("0.00090000"))]
