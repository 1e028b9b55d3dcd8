"""Client keys in the admin: creating or rotating one shows the new key on the page that answers
the request, once. It is never put in Django's messages framework, whose storage (a cookie, or the
session table) would keep it around. Every change goes through a service, which writes the audit
trail."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from chat.admin.common import ModelListField, ReadOnlyAdmin, actor_of
from chat.keys import services
from chat.keys.selectors import api_key_list
from chat.models import ApiKey, ApiKeyEvent
from llmserver.http.errors import ApiError


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=ApiKey.Scope.choices, widget=forms.CheckboxSelectMultiple, initial=[ApiKey.Scope.CHAT]
    )
    allowed_models = ModelListField(required=False, help_text="Comma-separated; empty allows every model.")

    class Meta:
        model = ApiKey
        fields = [
            "name", "owner", "scopes", "allowed_models", "upstream_credential", "expires_at",
            "requests_per_minute", "tokens_per_day", "monthly_budget_usd",
        ]
        help_texts = {
            "requests_per_minute": "Empty: the server default (LIMIT_REQUESTS_PER_MINUTE). 0: unlimited.",
            "tokens_per_day": "Empty: the server default (LIMIT_TOKENS_PER_DAY). 0: unlimited.",
            "monthly_budget_usd": "Empty: the server default (LIMIT_MONTHLY_BUDGET_USD). 0: no budget.",
        }


class ApiKeyEventInline(admin.TabularInline):
    model = ApiKeyEvent
    extra = 0
    can_delete = False
    fields = ["created_at", "action", "actor", "note"]
    readonly_fields = fields
    ordering = ["created_at"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = ["name", "masked", "scope_list", "status", "last_used_at", "total_tokens", "created_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "key_id"]
    readonly_fields = ["key_id", "last4", "created_at", "revoked_at", "last_used_at"]
    inlines = [ApiKeyEventInline]
    actions = ["revoke_selected", "rotate_selected"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiKey]:
        return api_key_list()

    @admin.display(description="key")
    def masked(self, api_key: ApiKey) -> str:
        return api_key.masked

    @admin.display(description="scopes")
    def scope_list(self, api_key: ApiKey) -> str:
        return ", ".join(api_key.scopes)

    @admin.display(description="tokens used", ordering="total_tokens")
    def total_tokens(self, api_key: ApiKey) -> int:
        return api_key.total_tokens

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Keys are revoked, never deleted: their usage records must keep pointing at them.
        return False

    def save_model(self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm, change: bool) -> None:
        data = form.cleaned_data
        if change:
            changes = {name: data[name] for name in form.changed_data}
            # `obj` already holds the form's values; the service saves just those fields and audits.
            services.api_key_update(api_key=obj, actor=actor_of(request), changes=changes)
            return
        api_key, raw_key = services.api_key_create(
            name=data["name"],
            actor=actor_of(request),
            scopes=data["scopes"],
            allowed_models=data["allowed_models"],
            expires_at=data["expires_at"],
            owner=data["owner"],
            upstream_credential=data["upstream_credential"],
            requests_per_minute=data["requests_per_minute"],
            tokens_per_day=data["tokens_per_day"],
            monthly_budget_usd=data["monthly_budget_usd"],
        )
        obj.pk = api_key.pk
        # Only for response_add, on this request object; never stored anywhere.
        request._new_api_keys = [(api_key, raw_key)]  # type: ignore[attr-defined]

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        return self._show_keys_once(request, request._new_api_keys, "created")  # type: ignore[attr-defined]

    def _show_keys_once(self, request: HttpRequest, new_keys: list[tuple[ApiKey, str]], verb: str) -> HttpResponse:
        return TemplateResponse(
            request,
            "admin/chat/apikey/shown_once.html",
            {**self.admin_site.each_context(request), "title": f"API key {verb}", "new_keys": new_keys,
             "verb": verb, "opts": self.model._meta},
        )

    @admin.action(description="Revoke the selected keys")
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = sum(services.api_key_revoke(api_key=api_key, actor=actor_of(request)) for api_key in queryset)
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)

    @admin.action(description="Rotate the selected keys (new secrets, shown once)")
    def rotate_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> HttpResponse | None:
        """The old secrets stop at once, which is what a suspected leak needs; a grace period for
        a planned rotation is `manage.py rotate_api_key --grace-minutes`."""
        new_keys = []
        for api_key in queryset:
            try:
                new_keys.append((api_key, services.api_key_rotate(api_key=api_key, actor=actor_of(request))))
            except ApiError as error:
                self.message_user(request, f"{api_key}: {error}", messages.ERROR)
        if not new_keys:
            return None
        return self._show_keys_once(request, new_keys, "rotated")


@admin.register(ApiKeyEvent)
class ApiKeyEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "api_key", "action", "actor", "note"]
    list_filter = ["action"]
    list_select_related = ["api_key"]
    search_fields = ["api_key__key_id", "api_key__name", "actor"]
