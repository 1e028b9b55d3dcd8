"""System routes. Health is public: load balancers and orchestrators call it without a key."""

from adrf.views import APIView as AsyncAPIView
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response


class HealthView(AsyncAPIView):
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
