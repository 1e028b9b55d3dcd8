"""Reading settings from the environment: small helpers that refuse what is not a setting, with a
sentence that names the variable and says what it takes (settings.py stops start-up with it)."""

import math
import os
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

env = environ.Env()


def number(name: str, default: int | float, *, minimum: int | float, maximum: int | float | None = None) -> Any:
    """The variable `name` as a number of `default`'s type, within [minimum, maximum]. Anything
    else stops start-up with a sentence naming the variable: a negative retry count or timeout
    would otherwise pass unnoticed and fail every chat, and a typo would be a bare ValueError.
    Parsed strictly by Python, not by django-environ, whose float parsing drops what is not a
    digit (`60s` is 60, `1e3` is 13) and reads a leading `$` as another variable's name."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    cast = type(default)
    try:
        value = cast(raw.strip())
    except ValueError:
        value = None
    if (
        value is None
        or (cast is float and not math.isfinite(value))
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        kind = "a whole number" if cast is int else "a number"
        bounds = f"at least {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise ImproperlyConfigured(f"{name} must be {kind} {bounds}, not {raw!r}.")
    return value


def price(name: str) -> Decimal | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite() or not 0 <= value <= 1_000_000:
        raise ImproperlyConfigured(f"{name} must be a price in USD per million tokens from 0 to 1000000, not {raw!r}.")
    return value


def tokens_by_model_prefix(name: str) -> dict[str, int]:
    try:
        return env.dict(name, cast={"value": int}, default={})
    except ValueError:
        raise ImproperlyConfigured(
            f"{name} must be model=tokens pairs separated by semicolons, for example `llama3=8192;qwen2.5=32768`."
        ) from None


def origins(name: str) -> list[str]:
    """The variable `name` as comma-separated web origins (scheme://host[:port]). A browser sends
    its origin without a path, so an entry with one would never match: it stops start-up instead."""
    values = env.list(name, default=[])
    for value in values:
        parts = urlsplit(value)
        if not (parts.scheme and parts.netloc) or parts.path or parts.query or parts.fragment:
            raise ImproperlyConfigured(
                f"{name} holds {value!r}, which is not an origin: give each as scheme://host[:port], "
                "for example https://app.example.com, with no path."
            )
    return values
