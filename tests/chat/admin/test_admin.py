"""The admin shows keys, sessions, messages and usage, never a secret."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.test import APIClient

from chat.models import ApiKey, UsageDailyTotal
from chat.usage.services import usage_record
from tests.support.personas import Persona, database_text


@pytest.fixture
def operator(db: None, client):
    client.force_login(User.objects.create_superuser("olivia", "olivia@example.com", "pw"))
    return client


def test_the_key_list_shows_id_and_last4_but_never_the_hash(alice: Persona, operator) -> None:
    page = operator.get("/admin/chat/apikey/").content.decode()
    detail = operator.get(f"/admin/chat/apikey/{alice.api_key.pk}/change/").content.decode()

    assert alice.api_key.key_id in page and alice.api_key.last4 in page
    stored_hash = ApiKey.objects.get().secret_hash
    assert stored_hash not in page + detail
    assert alice.raw_key not in page + detail


def test_sessions_are_searchable_by_session_id(alice: Persona, operator) -> None:
    alice.client.post("/api/v1/chat", {"session_id": "findme-1", "user_message": "hi"}, format="json")
    alice.client.post("/api/v1/chat", {"session_id": "other-2", "user_message": "hi"}, format="json")

    page = operator.get("/admin/chat/chatsession/", {"q": "findme"}).content.decode()
    messages = operator.get("/admin/chat/message/", {"q": "findme-1"}).content.decode()

    assert "findme-1" in page and "other-2" not in page
    assert "2 messages" in messages


def test_usage_records_are_listed(alice: Persona, operator) -> None:
    alice.client.post("/api/v1/chat", {"session_id": "s", "user_message": "hi"}, format="json")

    assert operator.get("/admin/chat/usagerecord/").status_code == 200


def new_keys_on(page: str) -> list[str]:
    return re.findall(r'<code class="new-api-key">(llms_[0-9A-Za-z_]+)</code>', page)


def test_creating_a_key_shows_it_once_and_stores_only_its_hash(operator, caplog) -> None:
    response = operator.post("/admin/chat/apikey/add/", {
        "name": "web-app", "scopes": ["chat", "read"], "allowed_models": "gpt-4o-mini, gpt-4o",
        "upstream_credential": "", "owner": "", "expires_at_0": "", "expires_at_1": "",
        "events-TOTAL_FORMS": "0", "events-INITIAL_FORMS": "0",
    })

    [raw_key] = new_keys_on(response.content.decode())
    api_key = ApiKey.objects.get()
    assert (api_key.name, api_key.scopes, api_key.allowed_models) == ("web-app", ["chat", "read"], ["gpt-4o-mini", "gpt-4o"])
    assert list(api_key.events.values_list("action", "actor")) == [("created", "admin:olivia")]
    assert response["Cache-Control"].startswith("max-age=0") and "no-store" in response["Cache-Control"]
    later = operator.get("/admin/chat/apikey/").content.decode() + operator.get(
        f"/admin/chat/apikey/{api_key.pk}/change/").content.decode()
    assert raw_key not in later
    assert raw_key not in database_text()
    assert raw_key not in caplog.text
    assert APIClient(HTTP_AUTHORIZATION=f"Bearer {raw_key}").get("/api/v1/sessions").status_code == 200


def test_the_key_list_shows_status_last_use_and_tokens(alice: Persona, operator) -> None:
    alice.client.post("/api/v1/chat", {"session_id": "s", "user_message": "hi"}, format="json")
    tokens = ApiKey.objects.get().usage_records.get().total_tokens

    page = operator.get("/admin/chat/apikey/").content.decode()

    assert "active" in page
    assert f'<td class="field-total_tokens">{tokens}</td>' in page


def test_the_revoke_action_revokes_and_audits(alice: Persona, operator) -> None:
    operator.post("/admin/chat/apikey/", {"action": "revoke_selected", "_selected_action": [alice.api_key.pk]})

    assert alice.client.get("/api/v1/sessions").status_code == 401
    assert alice.api_key.events.last().actor == "admin:olivia"


def test_the_rotate_action_shows_the_new_key_once(alice: Persona, operator) -> None:
    response = operator.post("/admin/chat/apikey/", {"action": "rotate_selected", "_selected_action": [alice.api_key.pk]})

    [new_key] = new_keys_on(response.content.decode())
    assert alice.client.get("/api/v1/sessions").status_code == 401
    assert APIClient(HTTP_AUTHORIZATION=f"Bearer {new_key}").get("/api/v1/sessions").status_code == 200
    assert list(alice.api_key.events.values_list("action", "actor"))[-1] == ("rotated", "admin:olivia")
    assert new_key not in database_text()


def test_the_audit_trail_is_visible_in_the_admin(alice: Persona, operator) -> None:
    operator.post("/admin/chat/apikey/", {"action": "revoke_selected", "_selected_action": [alice.api_key.pk]})

    page = operator.get(f"/admin/chat/apikey/{alice.api_key.pk}/change/").content.decode()
    events = operator.get("/admin/chat/apikeyevent/").content.decode()

    assert "admin:olivia" in page and "revoked" in page
    assert "admin:olivia" in events


def test_editing_a_key_in_the_admin_is_audited(alice: Persona, operator) -> None:
    response = operator.post(f"/admin/chat/apikey/{alice.api_key.pk}/change/", {
        "name": "alice's app", "scopes": ["read"], "allowed_models": "", "upstream_credential": "", "owner": "",
        "expires_at_0": "", "expires_at_1": "", "events-TOTAL_FORMS": "1", "events-INITIAL_FORMS": "1",
        "events-0-id": alice.api_key.events.get().pk, "events-0-api_key": alice.api_key.pk,
    })

    assert response.status_code == 302
    assert ApiKey.objects.get().scopes == ["read"]
    assert list(alice.api_key.events.values_list("action", "actor", "note"))[-1] == ("updated", "admin:olivia", "scopes")
    assert alice.client.post("/api/v1/chat", {"user_message": "hi"}, format="json").status_code == 403


def test_the_usage_report_draws_its_chart_without_external_assets(alice: Persona, bob: Persona, operator) -> None:
    for persona, model, prompt in [(alice, "gpt-4o-mini", 1000), (alice, "gpt-4o", 10), (bob, "gpt-4o", 5)]:
        usage_record(
            api_key_id=persona.api_key.pk, session_pk=None, model=model, prompt_tokens=prompt, completion_tokens=0,
            usage_estimated=False, key_source="default", latency_ms=1, outcome="success",
        )

    page = operator.get("/admin/chat/usagedaily/report/").content.decode()

    assert page.count('<rect class="bar"') == 2  # today: one bar segment per model
    assert "gpt-4o-mini, 1,000 tokens" in page
    assert page.index(alice.api_key.key_id) < page.index(bob.api_key.key_id)  # top keys, most first
    assert not re.findall(r'(?:src|href)="(?:https?:)?//', page)
    assert "Report with chart" in operator.get("/admin/chat/usagedaily/").content.decode()


def test_limits_are_editable_in_the_admin(alice: Persona, operator) -> None:
    response = operator.post(f"/admin/chat/apikey/{alice.api_key.pk}/change/", {
        "name": "alice's app", "scopes": ["chat"], "allowed_models": "", "upstream_credential": "", "owner": "",
        "expires_at_0": "", "expires_at_1": "", "requests_per_minute": "30", "tokens_per_day": "",
        "monthly_budget_usd": "12.505", "events-TOTAL_FORMS": "1", "events-INITIAL_FORMS": "1",
        "events-0-id": alice.api_key.events.get().pk, "events-0-api_key": alice.api_key.pk,
    })

    assert response.status_code == 302
    api_key = ApiKey.objects.get()
    assert (api_key.requests_per_minute, api_key.tokens_per_day, api_key.monthly_budget_usd) == (30, None, Decimal("12.505"))
    assert alice.api_key.events.last().note == "monthly_budget_usd, requests_per_minute"


def test_the_usage_report_adds_up_each_model_over_its_days(alice: Persona, bob: Persona, operator) -> None:
    def call(persona: Persona, prompt: int) -> None:
        usage_record(
            api_key_id=persona.api_key.pk, session_pk=None, model="gpt-4o", prompt_tokens=prompt, completion_tokens=0,
            usage_estimated=False, key_source="default", latency_ms=1, outcome="success",
        )

    call(alice, 10)
    UsageDailyTotal.objects.update(day=timezone.now().date() - timedelta(days=1))  # so gpt-4o has two days
    call(bob, 5)

    page = operator.get("/admin/chat/usagedaily/report/").content.decode()

    assert "<tr><td>gpt-4o</td><td>2</td><td>15</td><td>0</td><td>15</td><td>0.000038</td></tr>" in page
