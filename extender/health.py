"""Health, readiness and metrics over HTTP, and nothing else.

:func:`create_health_app` is the whole HTTP face of a process that answers no scheduler
(``powercap controller``), and the metrics address of one that does (``powercap serve``,
whose verbs have an address and an app of their own): ``GET /healthz`` (the process
serves), ``/readyz`` (200 once ``is_ready()``, 503 before) and ``/metrics`` (the
Prometheus exposition of a :class:`~extender.telemetry.Telemetry`). Any other path is a
404. With a :class:`Heartbeat` from the verbs' app, ``/healthz`` also fails when the
verbs' event loop stops turning, and ``/readyz`` waits for the verbs to be served.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from extender.telemetry import Telemetry

TEXT = "text/plain"


class Heartbeat:
    """When the verbs' event loop last turned, for the other address: ``/healthz`` fails
    when the verbs' server is stuck, not only when the whole process is, and ``/readyz``
    waits for the verbs' app to have started. The verbs app beats every
    :attr:`PERIOD_S` while it runs, from the end of its startup on."""

    PERIOD_S = 1.0

    def __init__(self, stale_after_s: float = 30.0) -> None:
        self.stale_after_s = stale_after_s
        self.last: float | None = None  # monotonic; None while the verbs app is not running

    def beat(self) -> None:
        self.last = time.monotonic()

    def stopped(self) -> None:
        self.last = None

    @property
    def running(self) -> bool:
        """The verbs' app has started and not stopped."""
        return self.last is not None

    def stale_for(self) -> float | None:
        """Seconds since the last beat when that is over ``stale_after_s``, else ``None``
        (fresh, or not started)."""
        if self.last is None:
            return None
        age = time.monotonic() - self.last
        return age if age > self.stale_after_s else None


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


def add_health_routes(
    app: FastAPI,
    telemetry: Telemetry,
    is_ready: Callable[[], bool],
    *,
    heartbeat: Heartbeat | None = None,
) -> None:
    """``GET /healthz``, ``/readyz`` (200 once ``is_ready()``, 503 before) and
    ``/metrics`` on ``app``; with ``heartbeat`` (the verbs' app's, when another app serves
    them), ``/healthz`` fails when it stops beating and ``/readyz`` waits for it to run.
    The answers run on the event loop: none of them waits on anything."""

    @app.get("/healthz")
    async def healthz() -> Response:
        stale = heartbeat.stale_for() if heartbeat is not None else None
        if stale is not None:
            return Response(
                f"unhealthy: the verbs' event loop has not turned for {stale:.0f} s".encode(),
                status_code=503,
                media_type=TEXT,
            )
        return Response(b"ok", media_type=TEXT)

    @app.get("/readyz")
    async def readyz() -> Response:
        if heartbeat is not None and not heartbeat.running:
            reason = b"not ready: the scheduler verbs are not served yet"
        elif not is_ready():
            reason = b"not ready: the cluster mirror has not completed its first sync"
        else:
            return Response(b"ok", media_type=TEXT)
        return Response(reason, status_code=503, media_type=TEXT)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(telemetry.render(), media_type=CONTENT_TYPE_LATEST)


def create_health_app(
    telemetry: Telemetry,
    is_ready: Callable[[], bool],
    *,
    heartbeat: Heartbeat | None = None,
    on_start: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> FastAPI:
    """The app. ``on_start``/``on_stop`` run in the server's lifespan (start the mirror
    and the loops there, stop them there); ``is_ready`` is asked on every ``/readyz``;
    ``heartbeat`` as for :func:`add_health_routes`."""
    app = FastAPI(
        title="powercap",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=serving_lifespan(on_start, on_stop),
    )
    add_health_routes(app, telemetry, is_ready, heartbeat=heartbeat)
    return app
