"""ASGI entry point: what `manage.py serve` (and so `make run` and the Docker image) runs.

In front of Django, outermost first:
- Lifespan runs what a process does when it starts and stops (http/lifespan.py): it sweeps the
  turns of processes that went away, every half lease period, and, when it stops, waits for the
  ends of the turns uvicorn cut short, so that they are written before the process exits;
- RequestBodyLimit refuses oversized or unsized bodies before they are read (http/body_limit.py);
- the static files handler serves the static files (the admin's and the API docs' assets, a few
  hundred KB; http/static.py). WhiteNoise would be the usual choice, but its middleware is
  sync-only, and a sync middleware costs every request, static or not, a hop to a worker thread
  and back. A deployment with heavy static traffic puts a proxy or CDN in front instead.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmserver.settings")

django_application = get_asgi_application()

# (These need the settings and the apps loaded above.)
from chat import tokens  # noqa: E402
from chat.providers import log_provider_configuration  # noqa: E402
from chat.turns.run import turns_ending  # noqa: E402
from chat.turns.sweep import Sweeper  # noqa: E402
from llmserver.http.body_limit import RequestBodyLimit  # noqa: E402
from llmserver.http.lifespan import Lifespan  # noqa: E402
from llmserver.http.static import StaticFilesHandler  # noqa: E402

# How long a stopping process waits for the ends of the turns it cut short to be written.
TURN_ENDS_WAIT_SECONDS = 10


async def _write_the_ends_of_cut_turns() -> None:
    await turns_ending(timeout=TURN_ENDS_WAIT_SECONDS)


sweeper = Sweeper()
application = Lifespan(
    RequestBodyLimit(StaticFilesHandler(django_application)),
    startup=[sweeper.start],
    shutdown=[_write_the_ends_of_cut_turns, sweeper.stop],
)

log_provider_configuration()
# Load the shipped encodings (about 0.3 s) now rather than during the first chat.
for encoding_name in ("o200k_base", "cl100k_base"):
    tokens.get_encoding(encoding_name)
