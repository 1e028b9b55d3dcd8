"""System routes. Health and readiness are public: load balancers and orchestrators call them
without a key. System information and metrics need an `admin` key (metrics can be opened to an
unauthenticated scraper on a private network with METRICS_PUBLIC)."""

import json
from typing import Any

from adrf.views import APIView as AdrfAPIView
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from chat.keys.authentication import HasClientKey
from chat.models import ApiKey
from llmserver.http.errors import error_body
from llmserver.http.schema import ErrorSerializer
from llmserver.http.views import AsyncApiView
from monitoring import metrics, system


# The probes are not AsyncApiViews: they read no key, and must be answered at once under a burst,
# not after the requests queued for the database.
class HealthView(AdrfAPIView):
    """Liveness: the process answers. It touches neither the database nor upstream."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="system_health",
        summary="Liveness check (no key needed).",
        responses={200: inline_serializer("Health", {"status": serializers.CharField()})},
    )
    async def get(self, request: Request) -> Response:
        return Response({"status": "ok"})


class ReadyView(AdrfAPIView):
    """Readiness: 200 when the database answers and every migration is applied; otherwise 503
    naming what is wrong. The cache is only a cache (llmserver/cache.py): when it fails, the
    answer is still 200, with `"status": "degraded"` and the cache named in `degraded`, unless
    CACHE_REQUIRED is on. What degrades without it: free_mode checks a caller's key again on every
    request, and instances no longer share those verdicts."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="system_ready",
        summary="Readiness check (no key needed): database, migrations, and the cache (degraded, not failing).",
        responses={
            200: inline_serializer("Ready", {
                "status": serializers.ChoiceField(choices=["ready", "degraded"]),
                "checks": serializers.DictField(),
                "degraded": serializers.ListField(child=serializers.CharField()),
            }),
            503: ErrorSerializer,
        },
    )
    async def get(self, request: Request) -> Response:
        checks = await sync_to_async(system.readiness)()
        optional = set() if settings.CACHE_REQUIRED else {"cache"}
        failing = [name for name, check in checks.items() if not check["ok"] and name not in optional]
        degraded = [name for name, check in checks.items() if not check["ok"] and name in optional]
        if not failing:
            return Response({"status": "degraded" if degraded else "ready", "checks": checks, "degraded": degraded})
        return Response(
            error_body(
                error_code="not_ready",
                error_message=_("Not ready: %(failing)s.") % {"failing": ", ".join(failing)},
                details={"failing": failing, "checks": checks},
            ),
            status=503,
        )


class SystemInfoView(AsyncApiView):
    required_scopes = frozenset({ApiKey.Scope.ADMIN})

    @extend_schema(
        operation_id="system_info",
        summary="CPU, memory, disk, process, versions, database, cache, upstream and counts (admin scope).",
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT), 401: ErrorSerializer, 403: ErrorSerializer},
    )
    async def get(self, request: Request) -> Response:
        # psutil, the database and the cache all block: the request's worker thread, not the event loop.
        return Response(await sync_to_async(system.system_info)())


class PrometheusRenderer(BaseRenderer):
    media_type = "text/plain"
    format = "prometheus"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        if isinstance(data, bytes):
            return data
        # An error (no key, wrong scope): the one error shape, as text.
        return json.dumps(data).encode()


class MetricsPermission(HasClientKey):
    def has_permission(self, request: Request, view: Any) -> bool:
        return settings.METRICS_PUBLIC or super().has_permission(request, view)


class MetricsView(AsyncApiView):
    required_scopes = frozenset({ApiKey.Scope.ADMIN})
    permission_classes = [MetricsPermission]
    renderer_classes = [PrometheusRenderer]

    @extend_schema(
        operation_id="metrics",
        summary="Prometheus metrics of every worker process (admin scope, or METRICS_PUBLIC).",
        responses={(200, "text/plain"): OpenApiResponse(OpenApiTypes.STR), 401: ErrorSerializer, 403: ErrorSerializer},
    )
    async def get(self, request: Request) -> Response:
        response = Response(await sync_to_async(metrics.exposition, thread_sensitive=False)())
        response["Content-Type"] = CONTENT_TYPE_PLAIN_0_0_4
        return response
