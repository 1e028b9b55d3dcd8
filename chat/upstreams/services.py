"""Writes of the upstream credentials: an upstream key is stored only encrypted (crypto.py)."""

from django.db import transaction
from django.utils import timezone

from chat.keys.services import cleaned_model_names
from chat.models import UpstreamCredential
from chat.upstreams import crypto

MIN_KEY_LENGTH_TO_SHOW_LAST4 = 16


def upstream_credential_save(
    *, credential: UpstreamCredential, plaintext_key: str | None = None
) -> UpstreamCredential:
    """Store a credential, encrypting a new upstream key when one is given (None keeps the stored
    one). The plaintext is never stored; `api_key_last4` is what the admin shows."""
    if plaintext_key is not None:
        credential.api_key_encrypted = crypto.encrypt(plaintext_key)
        # A short key's last 4 characters would give most of it away.
        credential.api_key_last4 = plaintext_key[-4:] if len(plaintext_key) >= MIN_KEY_LENGTH_TO_SHOW_LAST4 else ""
    credential.served_models = cleaned_model_names(credential.served_models or [])
    credential.updated_at = timezone.now()
    credential.save()
    return credential


def upstream_credentials_reencrypt() -> int:
    """Re-encrypt every stored credential under the first FIELD_ENCRYPTION_KEYS key; returns how
    many. Run it after putting a new key first, before removing the old one."""
    count = 0
    with transaction.atomic():
        for credential in UpstreamCredential.objects.select_for_update().only("pk", "api_key_encrypted"):
            UpstreamCredential.objects.filter(pk=credential.pk).update(
                api_key_encrypted=crypto.reencrypt(credential.api_key_encrypted)
            )
            count += 1
    return count
