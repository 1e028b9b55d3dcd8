"""Operators' view of keys, upstream credentials, sessions, messages and usage.

Keys: creating or rotating one shows the new key on the page that answers the request, once.
It is never put in Django's messages framework, whose storage (a cookie, or the session table)
would keep it around. Every change goes through a service, which writes the audit trail.

Secrets never appear: not the key hashes, not the encrypted upstream keys; only key ids and
last characters. Sessions, messages and usage are the record of what happened: read-only.
"""

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.safestring import mark_safe

from chat import charts, selectors, services
from chat.models import (
    ApiKey,
    ApiKeyEvent,
    ChatSession,
    Message,
    ModelPrice,
    UpstreamCredential,
    UsageDaily,
    UsageRecord,
)
from llmserver.errors import ApiError


REPORT_DAYS = 30
TOP_KEYS = 10


def _actor(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"


class ModelListField(forms.CharField):
    """A list of model names typed as one comma-separated line."""

    def prepare_value(self, value: Any) -> Any:
        return ", ".join(value) if isinstance(value, list) else value

    def to_python(self, value: Any) -> list[str]:
        return [name.strip() for name in (value or "").split(",") if name.strip()]


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


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
        return selectors.api_key_list()

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
            services.api_key_update(api_key=obj, actor=_actor(request), changes=changes)
            return
        api_key, raw_key = services.api_key_create(
            name=data["name"],
            actor=_actor(request),
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
        revoked = sum(services.api_key_revoke(api_key=api_key, actor=_actor(request)) for api_key in queryset)
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)

    @admin.action(description="Rotate the selected keys (new secrets, shown once)")
    def rotate_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> HttpResponse | None:
        """The old secrets stop at once, which is what a suspected leak needs; a grace period for
        a planned rotation is `manage.py rotate_api_key --grace-minutes`."""
        new_keys = []
        for api_key in queryset:
            try:
                new_keys.append((api_key, services.api_key_rotate(api_key=api_key, actor=_actor(request))))
            except ApiError as error:
                self.message_user(request, f"{api_key}: {error}", messages.ERROR)
        if not new_keys:
            return None
        return self._show_keys_once(request, new_keys, "rotated")


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
        services.upstream_credential_save(credential=obj, plaintext_key=form.cleaned_data["api_key"] or None)


@admin.register(ApiKeyEvent)
class ApiKeyEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "api_key", "action", "actor", "note"]
    list_filter = ["action"]
    list_select_related = ["api_key"]
    search_fields = ["api_key__key_id", "api_key__name", "actor"]


@admin.register(ChatSession)
class ChatSessionAdmin(ReadOnlyAdmin):
    list_display = ["public_id", "title", "api_key", "model", "prompt_tokens_total", "completion_tokens_total", "updated_at"]
    list_select_related = ["api_key"]
    search_fields = ["public_id", "title"]
    exclude = ["turn_started_at"]


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ["id", "session", "role", "status", "prompt_tokens", "completion_tokens", "model", "created_at"]
    list_filter = ["role", "status"]
    list_select_related = ["session"]
    search_fields = ["session__public_id"]


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at", "api_key", "model", "prompt_tokens", "completion_tokens", "total_tokens", "cost", "outcome",
        "key_source", "latency_ms",
    ]
    list_filter = ["outcome", "model", "key_source", "api_key"]
    list_select_related = ["api_key"]
    date_hierarchy = "created_at"
    # Counting a million rows for the paginator costs more than the page: show "more" instead.
    show_full_result_count = False


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ["model_prefix", "input_per_million", "output_per_million", "updated_at"]
    search_fields = ["model_prefix"]
    fields = ["model_prefix", "input_per_million", "output_per_million"]

    def save_model(self, request: HttpRequest, obj: ModelPrice, form: forms.ModelForm, change: bool) -> None:
        obj.updated_at = timezone.now()
        super().save_model(request, obj, form, change)


@admin.register(UsageDaily)
class UsageDailyAdmin(ReadOnlyAdmin):
    list_display = ["day", "api_key", "model", "requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost"]
    list_filter = ["model", "api_key"]
    list_select_related = ["api_key"]
    date_hierarchy = "day"

    def get_urls(self) -> list[Any]:
        report = path("report/", self.admin_site.admin_view(self.report_view), name="chat_usagedaily_report")
        return [report, *super().get_urls()]

    def report_view(self, request: HttpRequest) -> HttpResponse:
        """The last 30 days: tokens per day and model as a chart, cost per model, the top keys."""
        day_to = timezone.now().date()
        day_from = day_to - timedelta(days=REPORT_DAYS - 1)
        overview = selectors.usage_overview(day_from=day_from, day_to=day_to, top_keys=TOP_KEYS)
        chart = charts.daily_tokens_svg(charts.points_from(overview["day_model"]), day_from=day_from, day_to=day_to)
        return TemplateResponse(request, "admin/chat/usagedaily/report.html", {
            **self.admin_site.each_context(request),
            "title": f"Usage, {day_from} to {day_to}",
            "opts": self.model._meta,
            "chart": mark_safe(chart),  # built from numbers and escaped model names only
            "totals": overview["totals"],
            "models": overview["models"],
            "top_keys": overview["top_keys"],
        })
