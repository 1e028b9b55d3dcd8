from django.urls import path, register_converter
from django.urls.converters import StringConverter

from chat.api import views
from chat.sessions.ids import SESSION_ID_CHARACTERS


class SessionIdConverter(StringConverter):
    """Only what a session id can be reaches a view: anything else in the path (a NUL, which
    PostgreSQL refuses, or any other character no id may contain) is a plain 404 with no query."""

    regex = SESSION_ID_CHARACTERS


register_converter(SessionIdConverter, "session_id")


class Sha256Converter(StringConverter):
    regex = "[0-9a-f]{64}"


register_converter(Sha256Converter, "sha256")

# No trailing slashes: clients of the original server call `/api/v1/chat`.
urlpatterns = [
    path("chat", views.ChatView.as_view(), name="chat"),
    path("sessions", views.SessionListView.as_view(), name="session-list"),
    path("sessions/<session_id:session_id>", views.SessionDetailView.as_view(), name="session-detail"),
    path("sessions/<session_id:session_id>/messages", views.SessionMessagesView.as_view(), name="session-messages"),
    path("sessions/<session_id:session_id>/usage", views.SessionUsageView.as_view(), name="session-usage"),
    path("images/<sha256:sha256>", views.ImageView.as_view(), name="image"),
    path("usage", views.UsageView.as_view(), name="usage"),
    path("keys", views.ApiKeyListView.as_view(), name="key-list"),
]
