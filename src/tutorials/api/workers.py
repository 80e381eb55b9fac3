"""The app in each process of `tutorials serve --workers N`: what uvicorn's workers import.

`serve` hands uvicorn the import string `tutorials.api.workers:create_worker_app` with
`factory=True` and `workers=N`. That is uvicorn's own worker model: a supervisor binds the
socket once, starts N spawned processes that each import this module, call the factory and
serve on the shared socket, restarts a worker that dies, and stops them all on SIGINT / SIGTERM.
Each worker has its own event loop, so it opens its own pools in its app's lifespan and closes
them at shutdown. N workers hold up to N times one process's connections
(`tutorials.db.budget`).

A spawned process inherits only the environment, so `serve` says everything through it: the
settings (`TUTORIALS_*`, `DATABASE_URL`; the loopback host names when bound to loopback),
`PROMETHEUS_MULTIPROC_DIR` for metrics that add up across workers (`tutorials.api.metrics`),
and how to log (`LOG_LEVEL`, `LOG_FORMAT` below).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from tutorials.api.metrics import HttpMetrics

__all__ = ["FACTORY", "LOG_FORMAT", "LOG_LEVEL", "create_worker_app"]

#: What `serve` passes to `uvicorn.run(..., factory=True)`.
FACTORY = "tutorials.api.workers:create_worker_app"
#: `serve`'s `--log-level` and `--log-format`, for the workers.
LOG_LEVEL = "TUTORIALS_SERVE_LOG_LEVEL"
LOG_FORMAT = "TUTORIALS_SERVE_LOG_FORMAT"


def create_worker_app() -> ASGIApp:
    """One worker's app: logging as `serve` was asked, settings from the environment, and a
    lifespan that opens this process's own pools."""
    from tutorials.api.app import create_app
    from tutorials.api.logs import configure_logging
    from tutorials.settings import get_settings

    configure_logging(
        os.environ.get(LOG_LEVEL, "info"), os.environ.get(LOG_FORMAT, "json"), pid=True
    )
    # uvicorn has already applied `access_log=False` in this process (its logging comes
    # before the app): keep its access lines off, as `serve` does (ours are structured).
    logging.getLogger("uvicorn.access").propagate = False
    app = create_app(get_settings())
    return _ClosesMetrics(app, app.state.metrics)


class _ClosesMetrics:
    """Tells the metrics this process is done once the app's lifespan has shut down.

    A pure ASGI wrapper: the app's own lifespan (which closes the pools) runs unchanged, and
    after it reports `lifespan.shutdown.complete` this worker's live gauges are dropped. A
    worker killed outright never gets here, so its gauges stay until `serve` stops.
    """

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                self.metrics.close()
            await send(message)

        await self.app(scope, receive, sending)
