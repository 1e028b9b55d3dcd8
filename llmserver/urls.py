from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from llmserver import errors
from monitoring import pages
from monitoring.api import MetricsView

urlpatterns = [
    path("api/v1/", include("chat.urls")),
    path("api/v1/system/", include("monitoring.urls")),
    path("v1/", include("chat.openai_urls")),
    path("metrics", MetricsView.as_view(), name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    # Staff pages, behind the admin login (monitoring/pages.py), before the admin's own catch-all.
    path("admin/dashboard/", pages.dashboard, name="admin-dashboard"),
    path("admin/playground/", pages.playground, name="admin-playground"),
    path("admin/playground/chat", pages.PlaygroundChatView.as_view(), name="admin-playground-chat"),
    path("admin/", admin.site.urls),
    # Anything else under the API is a 404 in the one error shape, in development too (with
    # DEBUG on, Django would show its HTML debug page instead of calling handler404).
    re_path(r"^(api|v1)/", errors.not_found),
]

handler404 = "llmserver.errors.not_found"
handler500 = "llmserver.errors.server_error"

admin.site.site_header = "LLM Server administration"
admin.site.site_title = "LLM Server"
