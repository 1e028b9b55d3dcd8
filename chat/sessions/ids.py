"""What a session id may be: the id clients use for a session, unique per client key."""

import uuid

from django.core.validators import RegexValidator
from django.utils.translation import gettext_lazy as _

# Also the path converter of the session addresses (chat/api/urls.py).
SESSION_ID_CHARACTERS = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
SESSION_ID_PATTERN = rf"^{SESSION_ID_CHARACTERS}$"
session_id_validator = RegexValidator(
    SESSION_ID_PATTERN,
    _("A session id is 1 to 128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit."),
    code="invalid_session_id",
)


def new_session_public_id() -> str:
    """The id of a session whose client named none."""
    return uuid.uuid4().hex
