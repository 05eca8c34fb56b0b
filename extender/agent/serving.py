"""The agent's HTTP face: ``/healthz``, ``/readyz`` (after the first round) and
``/metrics``, nothing else; served by :class:`extender.webhook.serving.HealthServer`."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from extender.agent.loop import AgentLoop
from extender.agent.metrics import AgentMetrics
from extender.health import TEXT, serving_lifespan


def agent_app(loop: AgentLoop, metrics: AgentMetrics) -> FastAPI:
    """The app; its lifespan starts the loop and, on the way out (SIGTERM), stops it —
    restoring the default limits when the loop says so."""
    app = FastAPI(
        title="powercap agent",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=serving_lifespan(loop.start, loop.stop),
    )

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b"ok", media_type=TEXT)

    @app.get("/readyz")
    async def readyz() -> Response:
        if loop.ready:
            return Response(b"ok", media_type=TEXT)
        return Response(b"not ready: no round has completed", status_code=503, media_type=TEXT)

    @app.get("/metrics")
    async def metrics_() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
