"""The HTTP face of the extender (FastAPI).

:func:`create_app` builds the app and wires its routes to :class:`Handlers`, which answer
over one :class:`~extender.webhook.decisions.Decider`: ``POST /filter``,
``/prioritize``, ``/bind``, ``/preempt`` speak the scheduler's extender protocol
(:mod:`extender.webhook.protocol`); ``GET /healthz`` (the process serves), ``/readyz``
(the mirror has completed its first full sync) and ``/metrics`` (Prometheus). Filter,
prioritize and preempt answer on the event loop; bind runs in a thread, since the
Kubernetes binder blocks on the API server.

Bodies are read raw and parsed with orjson; answers are orjson bytes.
:meth:`Handlers.answer` times each verb and guards it: a malformed request gets a 400
whose ``Error`` names the field, an internal failure a 500 with a one-line ``Error`` (the
traceback goes to the log, never to the caller). What each verb decides is the
:class:`~extender.webhook.decisions.Decider`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from extender.cluster.raw import ProtocolError
from extender.health import add_health_routes, serving_lifespan
from extender.telemetry import Telemetry
from extender.webhook.decisions import Decider, candidate_items
from extender.webhook.protocol import (
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderPreemptionArgs,
    ExtenderPreemptionResult,
    encode_filter_result,
    encode_host_priorities,
    parse,
)

log = logging.getLogger(__name__)

JSON = "application/json"


Verb = Literal["filter", "prioritize", "bind", "preempt"]


def _error(status: int, message: str) -> Response:
    return Response(orjson.dumps({"Error": message}), status_code=status, media_type=JSON)


class Handlers:
    """The app's answers, bytes in and a response out, over one :class:`Decider`.

    :meth:`answer` is the entry point for the protocol verbs: it runs the verb's handler
    under the error guard and times it; the verb methods themselves raise.
    """

    def __init__(
        self, decider: Decider, telemetry: Telemetry, is_ready: Callable[[], bool]
    ) -> None:
        self.decider = decider
        self.telemetry = telemetry
        self.is_ready = is_ready
        self._verbs: dict[Verb, Callable[[bytes], Response]] = {
            "filter": self.filter,
            "prioritize": self.prioritize,
            "bind": self.bind,
            "preempt": self.preempt,
        }

    def answer(self, verb: Verb, body: bytes) -> Response:
        """``verb``'s answer to ``body``: a 400 naming the field for a malformed request,
        a 500 with a one-line error for an internal failure (traceback to the log)."""
        start = time.perf_counter()
        try:
            response = self._verbs[verb](body)
        except ProtocolError as exc:
            self.telemetry.decided(verb, "bad_request")
            response = _error(400, f"{verb}: {exc}")
        except Exception as exc:
            log.exception("%s failed", verb)
            self.telemetry.decided(verb, "internal_error")
            response = _error(500, f"{verb}: internal error: {type(exc).__name__}: {exc}")
        self.telemetry.observe(verb, time.perf_counter() - start)
        return response

    def filter(self, body: bytes) -> Response:
        """The ``ExtenderFilterResult``: node names when the scheduler sent names, else
        the passing node objects."""
        args = parse(body, ExtenderArgs)
        outcome = self.decider.filter(args)
        if args.names_only:
            names = args.candidate_names()
            passed = (
                names if len(outcome.passed) == len(names) else [names[i] for i in outcome.passed]
            )
            content = encode_filter_result(
                passed, None, outcome.failed, unresolvable=outcome.unresolvable
            )
        else:
            items = candidate_items(args, outcome.passed)
            content = encode_filter_result(
                None, items, outcome.failed, unresolvable=outcome.unresolvable
            )
        return Response(content, media_type=JSON)

    def prioritize(self, body: bytes) -> Response:
        """The ``HostPriorityList``, a 0–10 score per candidate."""
        args = parse(body, ExtenderArgs)
        hosts, scores = self.decider.prioritize(args)
        return Response(encode_host_priorities(hosts, scores), media_type=JSON)

    def bind(self, body: bytes) -> Response:
        """The ``ExtenderBindingResult``; blocks on the API server with a real binder."""
        args = parse(body, ExtenderBindingArgs)
        return Response(orjson.dumps({"Error": self.decider.bind(args)}), media_type=JSON)

    def preempt(self, body: bytes) -> Response:
        """The ``ExtenderPreemptionResult``: the candidates kept, victims unchanged."""
        args = parse(body, ExtenderPreemptionArgs)
        result = ExtenderPreemptionResult(node_name_to_meta_victims=self.decider.preempt(args))
        return Response(result.to_json(), media_type=JSON)


def create_app(
    decider: Decider,
    telemetry: Telemetry,
    is_ready: Callable[[], bool],
    *,
    on_start: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
    bind_in_thread: bool = True,
) -> FastAPI:
    """The app. ``on_start``/``on_stop`` run in the server's lifespan (start the
    mirror and planner there). ``bind_in_thread`` runs bind off the event loop,
    since the Kubernetes binder blocks on the API server."""

    app = FastAPI(
        title="powercap extender",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=serving_lifespan(on_start, on_stop),
    )
    handlers = Handlers(decider, telemetry, is_ready)

    # Filter, prioritize and preempt are short CPU work under the state lock: answering
    # on the event loop saves a thread hop per request.
    @app.post("/filter")
    async def filter_(request: Request) -> Response:
        return handlers.answer("filter", await request.body())

    @app.post("/prioritize")
    async def prioritize(request: Request) -> Response:
        return handlers.answer("prioritize", await request.body())

    @app.post("/bind")
    async def bind(request: Request) -> Response:
        body = await request.body()
        if bind_in_thread:
            return await run_in_threadpool(handlers.answer, "bind", body)
        return handlers.answer("bind", body)

    @app.post("/preempt")
    async def preempt(request: Request) -> Response:
        return handlers.answer("preempt", await request.body())

    add_health_routes(app, telemetry, is_ready)

    @app.exception_handler(Exception)
    async def _unhandled(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return _error(500, f"internal error: {type(exc).__name__}")

    return app
