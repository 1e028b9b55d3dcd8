"""Staff pages, linked from the admin index: the operator dashboard and the chat playground.

Both are behind the admin login (`admin.site.admin_view`) and, beyond it, need operator rights:
a superuser, or a staff user granted "Can view usage record" (the dashboard shows every key's
spend, and the playground spends upstream money). The playground's chat endpoint is the API's
own chat view, authenticated by the admin session instead of a client key: what an operator
tries there runs exactly the code client apps run.
"""

from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.safestring import mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from drf_spectacular.utils import extend_schema
from rest_framework.authentication import SessionAuthentication
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request

from chat.api.views import ChatView
from chat.exceptions import SessionNotFound
from chat.keys.services import playground_key_for
from chat.models import ApiKey, UsageDailyTotal
from chat.sessions import selectors as session_selectors
from chat.turns.inputs import DEFAULT_TEMPERATURE
from chat.upstreams.selectors import model_default_for, models_usable_by
from chat.usage import charts
from chat.usage.selectors import usage_failures_recent, usage_overview
from llmserver.http.errors import ApiError
from llmserver.http.sse import EventStreamRenderer
from monitoring import system

DASHBOARD_DAYS = 30
RECENT_FAILURES = 20
PLAYGROUND_SESSIONS = 50
OPERATOR_PERMISSION = "chat.view_usagerecord"


def is_operator(user: Any) -> bool:
    return bool(user.is_active and user.is_staff and user.has_perm(OPERATOR_PERMISSION))


def operator_only(view: Any) -> Any:
    """`view` behind the admin login, for operators; other staff users get Django's 403 page."""
    return admin.site.admin_view(permission_required(OPERATOR_PERMISSION, raise_exception=True)(view))


@operator_only
def dashboard(request: HttpRequest) -> HttpResponse:
    """System stats, today's tokens and cost, 30 days of tokens per model, top keys, recent errors."""
    today = timezone.now().date()  # the roll-ups' days are UTC days
    day_from = today - timedelta(days=DASHBOARD_DAYS - 1)
    overview = usage_overview(day_from=day_from, day_to=today)
    today_rows = [group for group in overview["day_model"] if group["day"] == today]
    chart = charts.daily_tokens_svg(charts.points_from(overview["day_model"]), day_from=day_from, day_to=today)
    return TemplateResponse(request, "monitoring/dashboard.html", {
        **admin.site.each_context(request),
        "title": _("Dashboard"),
        # Without the table counts: four more queries, two of them whole-table counts.
        "info": system.system_info(counts=False),
        "today": {
            "day": today,
            "requests": sum(group["requests"] for group in today_rows),
            "total_tokens": sum(group["total_tokens"] for group in today_rows),
            "cost": sum(group["cost"] for group in today_rows),
        },
        "period": {"day_from": day_from, "day_to": today, **overview["totals"]},
        "chart": mark_safe(chart),  # built from numbers and escaped model names only
        "top_keys": overview["top_keys"],
        "failures": usage_failures_recent(limit=RECENT_FAILURES),
    })


@operator_only
def playground(request: HttpRequest) -> HttpResponse:
    """Chat with the server as a client app would, streaming. `?session=<id>` continues a session."""
    api_key = playground_key_for(user=request.user)
    session = None
    messages: list[Any] = []
    session_id = request.GET.get("session", "")
    if session_id:
        try:
            session = session_selectors.session_get(api_key=api_key, public_id=session_id)
        except SessionNotFound:
            session = None
        else:
            messages = list(session_selectors.message_list(session=session))
    recent_models = UsageDailyTotal.objects.filter(
        day__gte=timezone.now().date() - timedelta(days=DASHBOARD_DAYS)
    ).values_list("model", flat=True).distinct()
    return TemplateResponse(request, "monitoring/playground.html", {
        **admin.site.each_context(request),
        "title": _("Playground"),
        "api_key": api_key,
        "sessions": session_selectors.session_list(api_key=api_key)[:PLAYGROUND_SESSIONS],
        "session": session,
        "messages": messages,
        "model": session.model if session else model_default_for(api_key),
        "default_temperature": DEFAULT_TEMPERATURE,
        "models": sorted({*models_usable_by(api_key), *recent_models}),
    })


class StaffLoginRequired(ApiError):
    status_code = 403
    error_code = "staff_login_required"
    default_message = gettext_lazy(
        "Log in to the admin as a superuser or a staff user who may view usage records to use the playground."
    )


class StaffSessionAuthentication(SessionAuthentication):
    """The admin login (with Django's CSRF check) in place of a client key: the request runs as
    the staff user's playground key."""

    def authenticate(self, request: Request) -> tuple[Any, ApiKey]:
        authenticated = super().authenticate(request)
        if authenticated is None or not is_operator(authenticated[0]):
            raise StaffLoginRequired()
        user = authenticated[0]
        return user, playground_key_for(user=user)


class PlaygroundChatView(ChatView):
    """`POST /admin/playground/chat`: the body and answers of `POST /api/v1/chat`."""

    authentication_classes = [StaffSessionAuthentication]
    # JSON and events only: the browsable API would run the authentication again while rendering.
    renderer_classes = [JSONRenderer, EventStreamRenderer]

    @extend_schema(exclude=True)
    async def post(self, request: Request) -> Any:
        return await super().post(request)
