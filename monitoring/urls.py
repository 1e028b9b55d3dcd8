from django.urls import path

from monitoring import api

urlpatterns = [
    path("health", api.HealthView.as_view(), name="system-health"),
]
