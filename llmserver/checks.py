"""Django's deployment security checks, run as they would be with Django's own middleware.

Those checks find middleware by dotted path ("django.middleware.security.SecurityMiddleware" in
settings.MIDDLEWARE). Ours are subclasses that run in the event loop (llmserver/http/middleware.py),
so with the plain checks HSTS, the HTTPS redirect, nosniff, X-Frame-Options and CSRF would all
pass unexamined. This check runs the registered security checks again with each middleware
named as the Django class it extends, and reports what that run finds that the plain run
did not. "Middleware missing" (security.W001-W003, silenced in settings because the plain run
always reports them) comes back as llmserver.W001-W003 when the middleware really is missing.
"""

from collections.abc import Iterable
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register
from django.core.checks.registry import registry
from django.test.utils import override_settings
from django.utils.module_loading import import_string

_running = False
MIDDLEWARE_MISSING = {"security.W001", "security.W002", "security.W003"}


def django_middleware_name(path: str) -> str:
    """The dotted path of the Django middleware class that `path` extends, or `path` itself."""
    for cls in import_string(path).__mro__:
        if cls.__module__.startswith("django.") and cls.__name__.endswith("Middleware"):
            return f"{cls.__module__}.{cls.__qualname__}"
    return path


@register(Tags.security, deploy=True)
def security_checks_with_django_names(app_configs: Iterable[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    global _running
    django_names = [django_middleware_name(path) for path in settings.MIDDLEWARE]
    if _running or django_names == list(settings.MIDDLEWARE):
        return []
    _running = True
    try:
        plain = registry.run_checks(app_configs, tags=[Tags.security], include_deployment_checks=True)
        with override_settings(MIDDLEWARE=django_names):
            renamed = registry.run_checks(app_configs, tags=[Tags.security], include_deployment_checks=True)
    finally:
        _running = False
    found = [
        Warning(message.msg, hint=message.hint, id="llmserver." + message.id.split(".")[1])
        for message in renamed if message.id in MIDDLEWARE_MISSING
    ]
    return found + [message for message in renamed if message not in plain and message.id not in MIDDLEWARE_MISSING]
