"""Usage records, prices and the daily roll-ups in the admin, with the usage report."""

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.safestring import mark_safe

from chat.admin.common import ReadOnlyAdmin
from chat.models import ModelPrice, UsageDaily, UsageRecord
from chat.usage import charts
from chat.usage.selectors import usage_overview

REPORT_DAYS = 30


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
        overview = usage_overview(day_from=day_from, day_to=day_to)
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
