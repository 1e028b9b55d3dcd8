"""Every address, one include per app. Each app's urls.py lists its own routes whole."""

from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from llmserver.http import handlers

urlpatterns = [
    path("api/v1/", include("chat.api.urls")),
    path("v1/", include("chat.openai.urls")),
    # The system routes, /metrics and the operators' pages (before the admin's own catch-all).
    path("", include("monitoring.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("admin/", admin.site.urls),
    # Anything else under the API is a 404 in the one error shape, in development too (with
    # DEBUG on, Django would show its HTML debug page instead of calling handler404).
    re_path(r"^(api|v1)/", handlers.not_found),
]

handler400 = "llmserver.http.handlers.bad_request"
handler404 = "llmserver.http.handlers.not_found"
handler500 = "llmserver.http.handlers.server_error"

admin.site.site_header = "LLM Server administration"
admin.site.site_title = "LLM Server"
