"""What the chat app's admin pages share."""

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest


def actor_of(request: HttpRequest) -> str:
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
