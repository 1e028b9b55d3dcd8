"""ASGI lifespan: work to do when a server process starts and when it stops (uvicorn's lifespan
protocol; Django's own ASGI handler does not speak it). Every other scope goes to the app."""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Hook = Callable[[], Awaitable[Any]]


class Lifespan:
    """Runs the `startup` hooks before the process takes requests (a failure stops it from
    starting), and the `shutdown` hooks once uvicorn has stopped taking them and let the requests
    in flight end (GRACEFUL_SHUTDOWN_SECONDS); a failing shutdown hook is logged and the others
    still run."""

    def __init__(self, app: ASGIApp, *, startup: list[Hook], shutdown: list[Hook]) -> None:
        self.app = app
        self.startup = startup
        self.shutdown = shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for hook in self.startup:
                        await hook()
                except Exception as exc:
                    logger.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for hook in self.shutdown:
                    try:
                        await hook()
                    except Exception:
                        logger.exception("a shutdown step failed")
                await send({"type": "lifespan.shutdown.complete"})
                return
