"""Which models a client key can use: its allow-list, and what its upstream credential serves."""

from django.utils.translation import gettext as _

from chat.exceptions import ModelNotAllowed, ModelNotAvailable
from chat.models import ApiKey, UsageRecord
from chat.providers import default_model


def model_default_for(api_key: ApiKey) -> str:
    """The model of a new session that names none: the first model the key's upstream credential
    serves, else the server default."""
    credential = api_key.upstream_credential
    if credential is not None and credential.served_models:
        return credential.served_models[0]
    return default_model()


def models_usable_by(api_key: ApiKey, *, upstream_models: list[str] | None = None) -> list[str]:
    """The models this key can use with the server's upstream, as far as the server knows (what
    /v1/models lists): its allow-list, narrowed to what its upstream credential serves when
    that is known; else what the credential serves; else its default model and whatever its
    upstream says it serves (`upstream_models`, when it could say). `model_check` enforces the
    same rules."""
    credential = api_key.upstream_credential
    served = credential.served_models if credential is not None else []
    if api_key.allowed_models:
        return [model for model in api_key.allowed_models if not served or model in served]
    if served:
        return list(served)
    default = model_default_for(api_key)
    return [default, *(model for model in upstream_models or () if model != default)]


def model_check(*, api_key: ApiKey, model: str, key_source: str) -> None:
    if api_key.allowed_models and model not in api_key.allowed_models:
        raise ModelNotAllowed(
            _("This API key may not use the model %(model)s; it may use: %(allowed)s.")
            % {"model": model, "allowed": ", ".join(api_key.allowed_models)},
            details={"model": model, "allowed_models": api_key.allowed_models},
        )
    credential = api_key.upstream_credential
    if key_source == UsageRecord.KeySource.DEFAULT and credential is not None and credential.served_models:
        if model not in credential.served_models:
            raise ModelNotAvailable(
                _("The upstream assigned to this API key does not serve %(model)s; it serves: %(served)s.")
                % {"model": model, "served": ", ".join(credential.served_models)},
                details={"model": model, "served_models": credential.served_models},
            )
