"""Upstream credentials stored by operators: encrypted at rest, assigned to client keys."""

from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command

from chat.models import ApiKey, UpstreamCredential
from chat.upstreams import crypto
from chat.upstreams.services import upstream_credential_save
from tests.support.fake_upstream import FakeUpstream
from tests.support.personas import UPSTREAM_TEST_KEY, Persona, database_text

PLAIN_UPSTREAM_KEY = "sk-stored-credential-PLAINTEXT-0123456789abcd"


def store(name: str, plaintext: str, **fields: object) -> UpstreamCredential:
    return upstream_credential_save(credential=UpstreamCredential(name=name, **fields), plaintext_key=plaintext)


def test_a_stored_credential_is_encrypted_and_shows_only_its_last_4(db: None, admin_client) -> None:
    response = admin_client.post(
        "/admin/chat/upstreamcredential/add/",
        {"name": "team-openai", "base_url": "", "api_key": PLAIN_UPSTREAM_KEY, "served_models": "gpt-4o, gpt-4o-mini"},
    )

    assert response.status_code == 302
    credential = UpstreamCredential.objects.get()
    assert PLAIN_UPSTREAM_KEY not in database_text()
    assert crypto.decrypt(credential.api_key_encrypted) == PLAIN_UPSTREAM_KEY
    assert (credential.api_key_last4, credential.served_models) == ("abcd", ["gpt-4o", "gpt-4o-mini"])
    pages = admin_client.get("/admin/chat/upstreamcredential/").content.decode() + admin_client.get(
        f"/admin/chat/upstreamcredential/{credential.pk}/change/"
    ).content.decode()
    assert "…abcd" in pages
    assert PLAIN_UPSTREAM_KEY not in pages and credential.api_key_encrypted not in pages


def test_saving_without_a_new_key_keeps_the_stored_one(db: None, admin_client) -> None:
    credential = store("local", PLAIN_UPSTREAM_KEY)

    admin_client.post(f"/admin/chat/upstreamcredential/{credential.pk}/change/",
                      {"name": "local-vllm", "base_url": "http://127.0.0.1:8000/v1", "api_key": "", "served_models": ""})

    credential.refresh_from_db()
    assert (credential.name, credential.base_url) == ("local-vllm", "http://127.0.0.1:8000/v1")
    assert crypto.decrypt(credential.api_key_encrypted) == PLAIN_UPSTREAM_KEY


def test_a_client_key_with_a_credential_chats_through_its_key_and_base_url(
    alice: Persona, fake_upstream: FakeUpstream, settings
) -> None:
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # the server default would fail
    settings.OPENAI_API_KEY = "sk-server-default"
    credential = store("fake", UPSTREAM_TEST_KEY, base_url=fake_upstream.base_url, served_models=["model-a", "model-b"])
    ApiKey.objects.filter(pk=alice.api_key.pk).update(upstream_credential=credential)

    response = alice.client.post("/api/v1/chat", {"user_message": "Hi"}, format="json")

    assert response.status_code == 200
    assert response.json()["key_source"] == "default"
    assert fake_upstream.requests[0].headers["authorization"] == f"Bearer {UPSTREAM_TEST_KEY}"
    assert fake_upstream.requests[0].json["model"] == "model-a"


def test_a_model_the_credential_does_not_serve_is_refused(alice: Persona, fake_upstream: FakeUpstream) -> None:
    credential = store("fake", UPSTREAM_TEST_KEY, base_url=fake_upstream.base_url, served_models=["model-a"])
    ApiKey.objects.filter(pk=alice.api_key.pk).update(upstream_credential=credential)

    response = alice.client.post("/api/v1/chat", {"user_message": "Hi", "model": "gpt-4o"}, format="json")

    assert response.status_code == 400
    assert response.json()["error_code"] == "model_not_available"
    assert response.json()["error_message"] == (
        "The upstream assigned to this API key does not serve gpt-4o; it serves: model-a."
    )
    assert fake_upstream.requests == []


def test_reencrypting_moves_every_credential_to_the_newest_key(db: None, settings) -> None:
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [old_key]
    credential = store("c", PLAIN_UPSTREAM_KEY)
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    out = StringIO()

    call_command("reencrypt_upstream_credentials", stdout=out)

    settings.FIELD_ENCRYPTION_KEYS = [new_key]
    credential.refresh_from_db()
    assert crypto.decrypt(credential.api_key_encrypted) == PLAIN_UPSTREAM_KEY
    assert out.getvalue().strip() == "Re-encrypted 1 upstream credential(s) under the first FIELD_ENCRYPTION_KEYS key."


def test_reencrypting_without_the_old_key_fails_with_a_sentence(db: None, settings) -> None:
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    store("c", PLAIN_UPSTREAM_KEY)
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    with pytest.raises(CommandError, match="cannot be decrypted with any key in FIELD_ENCRYPTION_KEYS"):
        call_command("reencrypt_upstream_credentials", stdout=StringIO())


def test_a_credential_whose_encryption_key_was_removed_gives_a_clear_error(
    alice: Persona, fake_upstream: FakeUpstream, settings
) -> None:
    credential = store("fake", UPSTREAM_TEST_KEY, base_url=fake_upstream.base_url)
    ApiKey.objects.filter(pk=alice.api_key.pk).update(upstream_credential=credential)
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    response = alice.client.post("/api/v1/chat", {"user_message": "Hi"}, format="json")

    assert response.status_code == 500
    assert response.json()["error_code"] == "upstream_credential_unreadable"
    assert response.json()["error_message"] == (
        "The upstream credential assigned to this API key cannot be decrypted; the operator has to put its "
        "key back in FIELD_ENCRYPTION_KEYS."
    )
    assert fake_upstream.requests == []


def test_a_rejected_credential_is_named_as_such(alice: Persona, fake_upstream: FakeUpstream) -> None:
    credential = store("stale", "sk-revoked-at-the-provider-000000", base_url=fake_upstream.base_url)
    ApiKey.objects.filter(pk=alice.api_key.pk).update(upstream_credential=credential)

    response = alice.client.post("/api/v1/chat", {"user_message": "Hi"}, format="json")

    assert response.status_code == 502
    assert response.json()["error_message"] == (
        "The model provider rejected the upstream credential assigned to this API key; the operator has to check it."
    )


def test_a_short_upstream_key_shows_no_characters(db: None) -> None:
    assert store("short", "sk-12345").api_key_last4 == ""
    assert store("long", PLAIN_UPSTREAM_KEY).api_key_last4 == "abcd"
