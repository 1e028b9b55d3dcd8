from django.urls import path

from chat import api

# No trailing slashes: clients of the original server call `/api/v1/chat`.
urlpatterns = [
    path("chat", api.ChatView.as_view(), name="chat"),
    path("sessions", api.SessionListView.as_view(), name="session-list"),
    path("sessions/<str:session_id>", api.SessionDetailView.as_view(), name="session-detail"),
    path("sessions/<str:session_id>/messages", api.SessionMessagesView.as_view(), name="session-messages"),
    path("sessions/<str:session_id>/usage", api.SessionUsageView.as_view(), name="session-usage"),
    path("usage", api.UsageView.as_view(), name="usage"),
    path("keys", api.ApiKeyListView.as_view(), name="key-list"),
]
