"""ASGI entry point: what `manage.py serve` (and so `make run` and the Docker image) runs.

In front of Django, outermost first:
- RequestBodyLimit refuses oversized or unsized bodies before they are read (http/body_limit.py);
- Django's ASGI static files handler serves the static files (the admin's and the API docs'
  assets, a few hundred KB). WhiteNoise would be the usual choice, but its middleware is
  sync-only, and a sync middleware costs every request, static or not, a hop to a worker thread
  and back. A deployment with heavy static traffic puts a proxy or CDN in front instead.
"""

import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmserver.settings")

django_application = get_asgi_application()

from llmserver.http.body_limit import RequestBodyLimit  # noqa: E402  (needs the settings loaded above)

application = RequestBodyLimit(ASGIStaticFilesHandler(django_application))

from chat import tokens  # noqa: E402  (needs the apps loaded above)
from chat.providers import log_provider_configuration  # noqa: E402

log_provider_configuration()
# Load the shipped encodings (about 0.3 s) now rather than during the first chat.
for encoding_name in ("o200k_base", "cl100k_base"):
    tokens.get_encoding(encoding_name)
