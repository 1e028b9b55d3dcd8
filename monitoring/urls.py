"""Every monitoring route: the system routes of the API, the Prometheus scrape, and the operators'
pages behind the admin login (included before the admin's own catch-all)."""

from django.urls import path

from monitoring import api, pages

urlpatterns = [
    path("api/v1/system/health", api.HealthView.as_view(), name="system-health"),
    path("api/v1/system/ready", api.ReadyView.as_view(), name="system-ready"),
    path("api/v1/system/info", api.SystemInfoView.as_view(), name="system-info"),
    path("metrics", api.MetricsView.as_view(), name="metrics"),
    path("admin/dashboard/", pages.dashboard, name="admin-dashboard"),
    path("admin/playground/", pages.playground, name="admin-playground"),
    path("admin/playground/chat", pages.PlaygroundChatView.as_view(), name="admin-playground-chat"),
]
