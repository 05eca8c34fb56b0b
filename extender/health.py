"""Health, readiness and metrics over HTTP, and nothing else.

:func:`create_health_app` is the whole HTTP face of a process that answers no scheduler
(``powercap controller``): ``GET /healthz`` (the process serves), ``/readyz`` (200 once
``is_ready()``, 503 before) and ``/metrics`` (the Prometheus exposition of a
:class:`~extender.telemetry.Telemetry`). Any other path is a 404.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from extender.telemetry import Telemetry

TEXT = "text/plain"


def serving_lifespan(
    on_start: Callable[[], None] | None, on_stop: Callable[[], None] | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A FastAPI lifespan that runs ``on_start`` when the server starts and ``on_stop``
    when it stops (start the mirror and the loops there, stop them there)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if on_start is not None:
            on_start()
        try:
            yield
        finally:
            if on_stop is not None:
                on_stop()

    return lifespan


def add_health_routes(app: FastAPI, telemetry: Telemetry, is_ready: Callable[[], bool]) -> None:
    """``GET /healthz``, ``/readyz`` (200 once ``is_ready()``, 503 before) and
    ``/metrics`` on ``app``."""

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b"ok", media_type=TEXT)

    @app.get("/readyz")
    async def readyz() -> Response:
        if is_ready():
            return Response(b"ok", media_type=TEXT)
        return Response(
            b"not ready: the cluster mirror has not completed its first sync",
            status_code=503,
            media_type=TEXT,
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(telemetry.render(), media_type=CONTENT_TYPE_LATEST)


def create_health_app(
    telemetry: Telemetry,
    is_ready: Callable[[], bool],
    *,
    on_start: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> FastAPI:
    """The app. ``on_start``/``on_stop`` run in the server's lifespan (start the mirror
    and the loops there, stop them there); ``is_ready`` is asked on every ``/readyz``."""
    app = FastAPI(
        title="powercap",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=serving_lifespan(on_start, on_stop),
    )
    add_health_routes(app, telemetry, is_ready)
    return app
