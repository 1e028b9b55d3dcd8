"""OpenAPI: how clients authenticate, so that the docs' "Authorize" button sends the key.
Registered when the module is imported (chat/apps.py)."""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "chat.keys.authentication.ApiKeyAuthentication"
    name = "clientKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A client key from `manage.py create_api_key`: `Authorization: Bearer llms_...`.",
        }
