"""Serializer fields that take only the JSON type they name: DRF's own fields quietly convert
(`5` becomes "5", "yes" becomes True, "5" becomes 5), and a client that sends the wrong type
should learn it rather than have it guessed."""

from typing import Any

from django.core.validators import RegexValidator
from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

# For names that end up in logs, metrics and upstream requests (a model's): no control characters.
printable_validator = RegexValidator(
    # C0 and C1 control characters, and the line and paragraph separators.
    r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*\Z",
    _("Must not contain control characters (such as a line break)."),
    code="not_printable",
)


class StrictCharField(serializers.CharField):
    """A string that must be a JSON string: DRF's own CharField quietly turns 5 into "5"."""

    default_error_messages = {"invalid": _("Must be a string.")}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A boolean that must be a JSON boolean, not "yes" or 1."""

    default_error_messages = {"invalid": _("Must be true or false.")}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class StrictIntegerField(serializers.IntegerField):
    """An integer that must be a JSON integer, not "5", 5.0 or true."""

    default_error_messages = {"invalid": _("Must be an integer.")}

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    """A number that must be a JSON number, not "0.5" or true."""

    default_error_messages = {"invalid": _("Must be a number.")}

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        return super().to_internal_value(data)


def printable_name_field(**kwargs: Any) -> StrictCharField:
    """A name of up to 200 characters that ends up in logs, metrics and upstream requests (a
    model's): refused with a control character in it, so that it cannot forge a log line."""
    return StrictCharField(max_length=200, validators=[printable_validator], **kwargs)
