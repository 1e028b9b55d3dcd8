"""DRF authentication by client key: `Authorization: Bearer llms_...`."""

from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.utils.translation import gettext as _
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from chat.exceptions import ScopeMissing
from chat.keys.selectors import api_key_authenticate
from chat.keys.services import api_key_touch
from chat.models import ApiKey

# Longer headers are not keys; refusing them early keeps a 10 KB header from costing anything.
MAX_AUTHORIZATION_HEADER_LENGTH = 200


class ApiKeyAuthentication(BaseAuthentication):
    """Returns None when no Authorization header is sent (so that other schemes get a turn), and
    fails with one and the same 401 for every bad key: malformed, unknown, revoked or expired keys
    must be indistinguishable to a caller probing for valid ones."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[AnonymousUser, ApiKey] | None:
        header = get_authorization_header(request)
        if not header:
            return None
        if len(header) > MAX_AUTHORIZATION_HEADER_LENGTH:
            raise exceptions.AuthenticationFailed()
        try:
            scheme, _, credential = header.decode("ascii").partition(" ")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed() from None
        if scheme.lower() != self.keyword.lower():
            raise exceptions.AuthenticationFailed()
        api_key = api_key_authenticate(raw_key=credential.strip())
        if api_key is None:
            raise exceptions.AuthenticationFailed()
        api_key_touch(api_key=api_key)
        return AnonymousUser(), api_key

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="api"'


# What a request needs unless its view says otherwise: reading needs `chat` or `read`,
# changing anything needs `chat`. A view sets `required_scopes` to ask for something else.
READ_SCOPES = frozenset({ApiKey.Scope.CHAT, ApiKey.Scope.READ})
WRITE_SCOPES = frozenset({ApiKey.Scope.CHAT})


class HasClientKey(BasePermission):
    """Allows requests that authenticated with a client key holding one of the needed scopes.

    Without a key DRF answers 401; with a key that lacks the scope, 403 `insufficient_scope`
    naming the scopes that would do.
    """

    def has_permission(self, request: Request, view: Any) -> bool:
        api_key = request.auth
        if not isinstance(api_key, ApiKey):
            return False
        needed = getattr(view, "required_scopes", None) or (
            READ_SCOPES if request.method in SAFE_METHODS else WRITE_SCOPES
        )
        if not needed & set(api_key.scopes):
            raise ScopeMissing(
                _("This API key does not have the scope this needs: one of %(scopes)s.")
                % {"scopes": ", ".join(sorted(needed))},
                details={"required_scopes": sorted(needed)},
            )
        return True
