"""Upstream credentials in the admin: the upstream key is write-only, stored encrypted."""

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from chat.admin.common import ModelListField
from chat.models import UpstreamCredential
from chat.upstreams.services import upstream_credential_save


class UpstreamCredentialForm(forms.ModelForm):
    api_key = forms.CharField(
        label="Upstream API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted; only its last 4 characters are shown. Leave empty to keep the stored key.",
    )
    served_models = ModelListField(
        required=False, help_text="Comma-separated; the first is the default. Empty: any model."
    )
    base_url = forms.URLField(
        required=False, assume_scheme="https",
        help_text="An OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1. Empty: the server's OPENAI_BASE_URL.",
    )

    class Meta:
        model = UpstreamCredential
        fields = ["name", "base_url", "api_key", "served_models"]

    def clean_api_key(self) -> str:
        value = self.cleaned_data["api_key"]
        if not value and not self.instance.pk:
            raise forms.ValidationError("A new credential needs its upstream API key.")
        return value


@admin.register(UpstreamCredential)
class UpstreamCredentialAdmin(admin.ModelAdmin):
    form = UpstreamCredentialForm
    list_display = ["name", "base_url", "masked_key", "served_model_list", "updated_at"]
    search_fields = ["name"]

    @admin.display(description="upstream key")
    def masked_key(self, credential: UpstreamCredential) -> str:
        return f"…{credential.api_key_last4}"

    @admin.display(description="models")
    def served_model_list(self, credential: UpstreamCredential) -> str:
        return ", ".join(credential.served_models) or "any"

    def save_model(self, request: HttpRequest, obj: UpstreamCredential, form: forms.ModelForm, change: bool) -> None:
        upstream_credential_save(credential=obj, plaintext_key=form.cleaned_data["api_key"] or None)
