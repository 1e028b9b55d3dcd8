"""Client keys: format, hashing, authentication and the create_api_key command."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from chat.keys import key_format
from chat.models import ApiKey
from tests.support.personas import Persona

INVALID_KEY_BODY = {
    "success": False,
    "error_code": "invalid_api_key",
    "error_message": "The API key is invalid, revoked or expired.",
    "details": {},
}


def test_a_key_has_prefix_id_secret_and_checksum() -> None:
    raw, parsed = key_format.generate_key()

    assert raw.startswith("llms_")
    assert len(raw) == 5 + 12 + 1 + 40 + 6
    assert key_format.parse_key(raw) == parsed


def test_a_mistyped_key_fails_its_checksum() -> None:
    raw, _ = key_format.generate_key()
    position = 20
    typo = raw[:position] + ("A" if raw[position] != "A" else "B") + raw[position + 1:]

    assert key_format.parse_key(typo) is None
    assert key_format.parse_key(raw[:-1]) is None
    assert key_format.parse_key("sk-" + raw[3:]) is None


def test_the_stored_hash_is_keyed_by_secret_key(settings) -> None:
    _, parsed = key_format.generate_key()
    stored = key_format.hash_secret(parsed.secret)

    assert key_format.secret_matches(parsed.secret, stored)
    settings.SECRET_KEY = "another-secret-key-" + "x" * 40
    assert not key_format.secret_matches(parsed.secret, stored)


def test_the_command_prints_the_key_last_and_stores_only_a_hash(db: None) -> None:
    out = StringIO()

    call_command("create_api_key", "--name", "mobile-app", stdout=out)

    raw_key = out.getvalue().strip().splitlines()[-1]
    api_key = ApiKey.objects.get()
    assert (api_key.name, api_key.last4) == ("mobile-app", raw_key[-4:])
    stored_values = [str(value) for value in ApiKey.objects.values_list().get()]
    assert not any(key_format.parse_key(raw_key).secret in value for value in stored_values)
    assert raw_key not in stored_values


def test_a_key_from_the_command_authenticates(db: None, client) -> None:
    out = StringIO()
    call_command("create_api_key", "--name", "cli", stdout=out)
    raw_key = out.getvalue().strip().splitlines()[-1]

    response = client.get("/api/v1/sessions", HTTP_AUTHORIZATION=f"Bearer {raw_key}")

    assert response.status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        "Bearer llms_nottherightshape",
        "Bearer " + "x" * 10_000,
        "Basic dXNlcjpwYXNz",
        "Bearer llms_\x00abc",
        "Bearer",
    ],
)
def test_bad_authorization_headers_all_get_the_same_401(alice: Persona, client, header: str) -> None:
    response = client.get("/api/v1/sessions", HTTP_AUTHORIZATION=header)

    assert response.status_code == 401
    assert response.json() == INVALID_KEY_BODY


def test_an_unknown_well_formed_key_gets_the_same_401(db: None, client) -> None:
    raw, _ = key_format.generate_key()

    response = client.get("/api/v1/sessions", HTTP_AUTHORIZATION=f"Bearer {raw}")

    assert (response.status_code, response.json()) == (401, INVALID_KEY_BODY)


def test_a_right_key_id_with_a_wrong_secret_gets_the_same_401(alice: Persona, client) -> None:
    raw, _ = key_format.generate_key()
    body = f"llms_{alice.api_key.key_id}_{raw[18:58]}"
    forged = body + key_format._checksum(body)

    response = client.get("/api/v1/sessions", HTTP_AUTHORIZATION=f"Bearer {forged}")

    assert (response.status_code, response.json()) == (401, INVALID_KEY_BODY)


def test_a_revoked_key_stops_at_once(alice: Persona) -> None:
    assert alice.client.get("/api/v1/sessions").status_code == 200
    ApiKey.objects.filter(pk=alice.api_key.pk).update(revoked_at=timezone.now())

    response = alice.client.get("/api/v1/sessions")

    assert (response.status_code, response.json()) == (401, INVALID_KEY_BODY)


def test_health_needs_no_key(db: None, client) -> None:
    response = client.get("/api/v1/system/health")

    assert (response.status_code, response.json()) == (200, {"status": "ok"})
