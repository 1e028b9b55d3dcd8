"""Client key lifecycle: scopes, models, expiry, last use, revocation, rotation, audit, commands."""

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat.keys.services import api_key_create
from chat.models import ApiKey, ApiKeyEvent, ChatSession, Message
from tests.support.personas import Persona, client_for, make_persona, run_command
from tests.support.processes import PROJECT_DIR, child_environment

INVALID_KEY_BODY = {
    "success": False,
    "error_code": "invalid_api_key",
    "error_message": "The API key is invalid, revoked or expired.",
    "details": {},
}


def test_create_takes_scopes_expiry_and_models_and_prints_the_key_last(db: None) -> None:
    lines = run_command("create_api_key", "--name", "reports", "--scopes", "read", "--expires-in", "30",
                        "--models", "gpt-4o", "gpt-4o-mini")

    api_key = ApiKey.objects.get()
    assert (api_key.name, api_key.scopes, api_key.allowed_models) == ("reports", ["read"], ["gpt-4o", "gpt-4o-mini"])
    assert timedelta(days=29, hours=23) < api_key.expires_at - timezone.now() <= timedelta(days=30)
    assert lines[0].startswith(f"Created API key {api_key.key_id} for 'reports' (scopes: read, expires ")
    assert client_for(lines[-1]).get("/api/v1/sessions").status_code == 200
    assert list(api_key.events.values_list("action", "actor")) == [("created", "command")]


def test_list_shows_a_table_without_secrets(alice: Persona, bob: Persona) -> None:
    ApiKey.objects.filter(pk=bob.api_key.pk).update(revoked_at=timezone.now())

    lines = run_command("list_api_keys")

    assert lines[0].split() == ["KEY", "ID", "NAME", "KEY", "SCOPES", "STATUS", "LAST", "USED", "TOKENS", "CREATED"]
    table = "\n".join(lines)
    assert alice.api_key.masked in table and bob.api_key.masked in table
    assert alice.raw_key not in table and alice.raw_key[18:58] not in table
    assert "revoked" in table and "active" in table
    assert lines[-1] == "2 keys, 1 active."


def test_revoking_stops_the_key_on_its_very_next_request(alice: Persona) -> None:
    assert alice.client.get("/api/v1/sessions").status_code == 200

    lines = run_command("revoke_api_key", alice.api_key.key_id)

    response = alice.client.get("/api/v1/sessions")
    assert (response.status_code, response.json()) == (401, INVALID_KEY_BODY)
    assert lines == [f"Revoked API key {alice.api_key.key_id} ('alice's app')."]
    assert list(alice.api_key.events.values_list("action", "actor")) == [("created", "test"), ("revoked", "command")]


def test_rotation_keeps_the_keys_sessions_and_stops_the_old_secret_at_once(alice: Persona) -> None:
    alice.client.post("/api/v1/sessions", {"session_id": "kept"}, format="json")

    new_key = run_command("rotate_api_key", alice.api_key.key_id)[-1]

    assert alice.client.get("/api/v1/sessions").status_code == 401
    sessions = client_for(new_key).get("/api/v1/sessions").json()["results"]
    assert [s["session_id"] for s in sessions] == ["kept"]
    assert new_key.startswith(f"llms_{alice.api_key.key_id}_") and new_key != alice.raw_key
    assert ApiKey.objects.get().last4 == new_key[-4:]
    assert alice.api_key.events.last().action == "rotated"


def test_rotation_with_a_grace_period_keeps_the_old_secret_until_it_ends(alice: Persona) -> None:
    new_key = run_command("rotate_api_key", alice.api_key.key_id, "--grace-minutes", "10")[-1]

    assert alice.client.get("/api/v1/sessions").status_code == 200
    assert client_for(new_key).get("/api/v1/sessions").status_code == 200
    ApiKey.objects.update(previous_secret_valid_until=timezone.now() - timedelta(seconds=1))
    assert alice.client.get("/api/v1/sessions").status_code == 401
    assert client_for(new_key).get("/api/v1/sessions").status_code == 200


def test_a_revoked_key_cannot_be_rotated(alice: Persona) -> None:
    run_command("revoke_api_key", alice.api_key.key_id)

    with pytest.raises(CommandError, match="A revoked key cannot be rotated; create a new key instead."):
        run_command("rotate_api_key", alice.api_key.key_id)


@pytest.mark.parametrize("command", ["revoke_api_key", "rotate_api_key"])
def test_an_unknown_id_is_one_sentence_and_exit_status_1(tmp_path: Path, command: str) -> None:
    env = child_environment(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", LOG_FILE="")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=PROJECT_DIR, env=env, check=True)

    result = subprocess.run(
        [sys.executable, "manage.py", command, "nosuchkey"], cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
    )

    assert result.returncode == 1
    assert result.stderr.strip() == "CommandError: No API key with id 'nosuchkey' exists; list_api_keys shows the ids."


def test_an_expired_key_gets_the_same_401(alice: Persona) -> None:
    ApiKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    response = alice.client.get("/api/v1/sessions")

    assert (response.status_code, response.json()) == (401, INVALID_KEY_BODY)


def test_last_used_is_kept_fresh_without_a_write_on_every_request(alice: Persona) -> None:
    alice.client.get("/api/v1/sessions")
    first_use = ApiKey.objects.get().last_used_at

    with CaptureQueriesContext(connection) as queries:
        alice.client.get("/api/v1/sessions")

    assert first_use is not None
    assert not [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    ApiKey.objects.update(last_used_at=timezone.now() - timedelta(minutes=5))
    alice.client.get("/api/v1/sessions")
    assert ApiKey.objects.get().last_used_at > first_use


def test_a_read_key_can_read_but_not_chat(db: None) -> None:
    reader, raw = api_key_create(name="dashboard", actor="test", scopes=["read"])

    assert client_for(raw).get("/api/v1/sessions").status_code == 200
    response = client_for(raw).post("/api/v1/chat", {"user_message": "hi"}, format="json")

    assert response.status_code == 403
    assert response.json() == {
        "success": False,
        "error_code": "insufficient_scope",
        "error_message": "This API key does not have the scope this needs: one of chat.",
        "details": {"required_scopes": ["chat"]},
    }
    assert not Message.objects.exists()


def test_a_chat_key_cannot_reach_admin_endpoints(alice: Persona) -> None:
    response = alice.client.get("/api/v1/keys")

    assert (response.status_code, response.json()["error_code"]) == (403, "insufficient_scope")
    assert response.json()["details"] == {"required_scopes": ["admin"]}


def test_an_admin_key_lists_keys_without_secrets(alice: Persona) -> None:
    _, raw = api_key_create(name="ops", actor="test", scopes=["admin"])

    body = client_for(raw).get("/api/v1/keys").json()

    assert [k["name"] for k in body["results"]] == ["ops", "alice's app"]
    assert body["results"][1]["key"] == alice.api_key.masked
    assert body["results"][1]["status"] == "active"
    assert alice.raw_key[18:58] not in str(body) and alice.api_key.secret_hash not in str(body)


def test_a_key_limited_to_some_models_is_refused_others_and_nothing_is_stored(db: None) -> None:
    persona = make_persona("limited")
    ApiKey.objects.filter(pk=persona.api_key.pk).update(allowed_models=["offline"])

    response = persona.client.post("/api/v1/chat", {"user_message": "hi", "model": "gpt-4o"}, format="json")

    assert response.status_code == 403
    assert response.json()["error_code"] == "model_not_allowed"
    assert response.json()["error_message"] == "This API key may not use the model gpt-4o; it may use: offline."
    assert not ChatSession.objects.exists()
    assert persona.client.post("/api/v1/chat", {"user_message": "hi"}, format="json").status_code == 200


def test_every_change_is_audited_with_who_did_it(alice: Persona) -> None:
    run_command("rotate_api_key", alice.api_key.key_id)
    run_command("revoke_api_key", alice.api_key.key_id)

    assert list(ApiKeyEvent.objects.order_by("id").values_list("action", "actor")) == [
        ("created", "test"), ("rotated", "command"), ("revoked", "command"),
    ]


@pytest.mark.parametrize(("args", "sentence"), [
    (["create_api_key", "--name", "x" * 101], "A key's name is 1 to 100 characters."),
    (["create_api_key", "--name", "far", "--expires-in", "99999999"], "--expires-in must be a number of days from 1 to 36500."),
    (["create_api_key", "--name", "far", "--tokens-per-day", "99999999999999999999"],
     "tokens_per_day must be from 0 to 1000000000000000."),
    (["update_api_key", "KEY", "--name", "x" * 101], "A key's name is 1 to 100 characters."),
    (["usage_report", "--days", "1000000"], "--days must be from 1 to 3660."),
])
def test_a_command_given_a_value_past_its_bound_says_so_in_one_sentence(
    alice: Persona, args: list[str], sentence: str
) -> None:
    from django.core.management import CommandError

    args = [alice.api_key.key_id if arg == "KEY" else arg for arg in args]
    with pytest.raises(CommandError) as refused:
        run_command(*args)

    assert str(refused.value) == sentence
    assert ApiKey.objects.count() == 1
