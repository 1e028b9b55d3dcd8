from django.urls import path

from monitoring import api

urlpatterns = [
    path("health", api.HealthView.as_view(), name="system-health"),
    path("ready", api.ReadyView.as_view(), name="system-ready"),
    path("info", api.SystemInfoView.as_view(), name="system-info"),
]
