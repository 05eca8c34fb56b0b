"""The scheduler verbs' HTTP face (FastAPI).

:func:`create_app` serves ``POST /filter``, ``/prioritize``, ``/bind``, ``/preempt``, in
the scheduler's extender protocol (:mod:`extender.webhook.protocol`), and nothing else.
They are for kube-scheduler alone: on loopback in the sidecar layout, behind mutual TLS
otherwise (:mod:`extender.webhook.serving`). Health, readiness and metrics are another
app on another address (:func:`extender.health.create_health_app`), which watches this
one's event loop through a :class:`~extender.health.Heartbeat`.

Every verb call is bounded (:class:`~extender.webhook.settings.Limits`): it takes a slot
of its lane's :class:`~extender.webhook.limits.Gate` (503 when none is free), reads its
body within the byte limit and the read deadline (413, 408), and is answered on a worker
thread of a pool as large as the gate, so no large body is parsed on the event loop.
Filter, prioritize and preempt share a lane with a bounded queue; binds, which wait on
the API server, have a lane of their own with no queue (see ``_Workers``). A small filter
or prioritize body (``Limits.inline_max_bytes``, a few thousand names) is answered on the
event loop instead: it takes a millisecond or two, less than the hop to a thread and back
costs a busy machine.

:meth:`Handlers.answer` times each verb and guards it: a malformed request gets a 400
whose ``Error`` names the field, too many candidates a 413 naming the field and the
limit, an internal failure a 500 that says only which verb failed (the exception, which
can carry API server headers and bodies, goes to the log, never to the caller). A
client that hangs up is counted, not logged as an error. Bodies are parsed with orjson;
answers are orjson bytes. What each verb decides is the
:class:`~extender.webhook.decisions.Decider`'s.

A verb call goes straight from the server to its handler (:class:`VerbsApp`), past the
framework's middleware, router and dependency resolution, which cost the scheduler's
three calls per pod more than the decisions do; everything else (other paths and
methods, the lifespan) is the framework's as usual.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from extender.cluster.raw import ProtocolError
from extender.health import Heartbeat
from extender.telemetry import Telemetry
from extender.webhook.decisions import Decider, candidate_items
from extender.webhook.limits import BadLength, BodyTooLarge, Busy, Gate, SlowBody, read_body
from extender.webhook.protocol import (
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderPreemptionArgs,
    ExtenderPreemptionResult,
    RequestTooLarge,
    encode_filter_result,
    encode_host_priorities,
    parse,
)
from extender.webhook.settings import Limits

log = logging.getLogger(__name__)

JSON = "application/json"
VERBS = ("filter", "prioritize", "bind", "preempt")
# A bind names a pod and a node: four short strings.
BIND_MAX_BODY_BYTES = 64 * 1024

Verb = Literal["filter", "prioritize", "bind", "preempt"]


def _error(status: int, message: str, *, close: bool = False) -> Response:
    # close: the rest of the request may still be on the wire (a body not read); a new
    # connection is cheaper than reading and dropping it.
    headers = {"Connection": "close"} if close else None
    return Response(
        orjson.dumps({"Error": message}), status_code=status, media_type=JSON, headers=headers
    )


class Handlers:
    """The verbs' answers, bytes in and a response out, over one :class:`Decider`.

    :meth:`answer` is the entry point: it runs the verb's handler under the error guard
    and times it; the verb methods themselves raise. ``max_candidates`` bounds the
    candidate lists of a request (``None``: unbounded)."""

    def __init__(
        self, decider: Decider, telemetry: Telemetry, max_candidates: int | None = None
    ) -> None:
        self.decider = decider
        self.telemetry = telemetry
        self.max_candidates = max_candidates
        self._verbs: dict[Verb, Callable[[bytes], Response]] = {
            "filter": self.filter,
            "prioritize": self.prioritize,
            "bind": self.bind,
            "preempt": self.preempt,
        }

    def answer(self, verb: Verb, body: bytes) -> Response:
        """``verb``'s answer to ``body``: 413 naming the field and the limit for too many
        candidates, 400 naming the field for a malformed request, 500 saying only that
        the verb failed for an internal failure (the traceback goes to the log)."""
        start = time.perf_counter()
        try:
            response = self._verbs[verb](body)
        except RequestTooLarge as exc:
            self.telemetry.decided(verb, "too_large")
            response = _error(413, f"{verb}: {exc} (powercap serve --max-candidates)")
        except ProtocolError as exc:
            self.telemetry.decided(verb, "bad_request")
            response = _error(400, f"{verb}: {exc}")
        except Exception:
            log.exception("%s failed", verb)
            self.telemetry.decided(verb, "internal_error")
            response = _error(500, f"{verb}: internal error; the extender's log has the details")
        self.telemetry.observe(verb, time.perf_counter() - start)
        return response

    def _parse_args(self, body: bytes) -> ExtenderArgs:
        return parse(body, ExtenderArgs, max_candidates=self.max_candidates)

    def filter(self, body: bytes) -> Response:
        """The ``ExtenderFilterResult``: node names when the scheduler sent names, else
        the passing node objects."""
        args = self._parse_args(body)
        reasons = self.decider.config.scheduler.reasons_if_some_pass
        outcome = self.decider.filter(args, reasons_if_some_pass=reasons)
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
        """The ``HostPriorityList``: a 0–10 score per candidate, less the lowest (see
        :func:`encode_host_priorities`)."""
        args = self._parse_args(body)
        hosts, scores = self.decider.prioritize(args)
        return Response(encode_host_priorities(hosts, scores, relative=True), media_type=JSON)

    def bind(self, body: bytes) -> Response:
        """The ``ExtenderBindingResult``; blocks on the API server with a real binder."""
        args = parse(body, ExtenderBindingArgs)
        return Response(orjson.dumps({"Error": self.decider.bind(args)}), media_type=JSON)

    def preempt(self, body: bytes) -> Response:
        """The ``ExtenderPreemptionResult``: the candidates kept, victims unchanged."""
        args = parse(body, ExtenderPreemptionArgs, max_candidates=self.max_candidates)
        result = ExtenderPreemptionResult(node_name_to_meta_victims=self.decider.preempt(args))
        return Response(result.to_json(), media_type=JSON)


_INLINE_VERBS: frozenset[Verb] = frozenset({"filter", "prioritize"})


@dataclass
class _Lane:
    """Admission and worker threads for some of the verbs."""

    gate: Gate
    pool: ThreadPoolExecutor
    max_body_bytes: int
    option: str  # what raises the bound, for the 503's Error
    body_option: str  # what raises the body limit, for the 413's Error


class _Workers:
    """The verbs' two lanes, made on the event loop that serves them (a gate belongs to
    one loop; a test client may run the same app on a second one).

    Binds wait on the API server, the other verbs on nothing: each kind has its own lane,
    so a slow API server cannot hold up filter and prioritize. A bind is never queued:
    the scheduler stops waiting after its ``httpTimeout``, and a bind queued behind binds
    that wait out their own timeout would outlast it; it is answered 503 at once, and the
    scheduler retries the pod."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lanes: dict[str, _Lane] = {}

    def lane(self, verb: Verb) -> _Lane:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or not self._lanes:
            self.stop(wait=False)
            self._loop = loop
            limits = self.limits
            self._lanes = {
                "decide": _Lane(
                    Gate(limits.max_concurrent, limits.max_queued),
                    ThreadPoolExecutor(limits.max_concurrent, thread_name_prefix="powercap-verb"),
                    limits.max_body_bytes,
                    "--max-concurrent, --max-queued",
                    "powercap serve --max-body-bytes",
                ),
                "bind": _Lane(
                    Gate(limits.max_binds, 0),
                    ThreadPoolExecutor(limits.max_binds, thread_name_prefix="powercap-bind"),
                    min(limits.max_body_bytes, BIND_MAX_BODY_BYTES),
                    "--max-binds",
                    "a bind names a pod and a node",
                ),
            }
        return self._lanes["bind" if verb == "bind" else "decide"]

    def stop(self, *, wait: bool) -> None:
        """Shut the pools down; ``wait``: until the calls in them (binds under way) finish."""
        for lane in self._lanes.values():
            lane.pool.shutdown(wait=wait)
        self._loop, self._lanes = None, {}


VerbHandler = Callable[[Request], Awaitable[Response]]


class VerbsApp(FastAPI):
    """The verbs' FastAPI app, with ``POST`` to a path of :attr:`verb_handlers` answered
    by that handler directly: no middleware, routing or dependency resolution on the
    scheduler's hot path. An exception out of a handler is logged and answered 500 as
    the app's own handler would; any other request is FastAPI's."""

    verb_handlers: dict[str, VerbHandler]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.verb_handlers.get(scope["path"])
            if handler is not None:
                try:
                    response = await handler(Request(scope, receive, send))
                except Exception as exc:
                    log.error("unhandled error", exc_info=exc)
                    response = _error(500, "internal error; the extender's log has the details")
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


async def _pulse(heartbeat: Heartbeat) -> None:
    while True:
        heartbeat.beat()
        await asyncio.sleep(Heartbeat.PERIOD_S)


def create_app(
    decider: Decider,
    telemetry: Telemetry,
    *,
    limits: Limits | None = None,
    heartbeat: Heartbeat | None = None,
    on_start: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> FastAPI:
    """The scheduler verbs' app (see the module doc), bounded by ``limits`` (the
    defaults of :class:`Limits` when ``None``).

    ``on_start``/``on_stop`` run in the server's lifespan (start the mirror and planner
    there); ``on_stop`` runs after the verb calls under way have finished. ``heartbeat``
    is beaten while the app runs (see :class:`Heartbeat`)."""
    bounds = limits or Limits()
    workers = _Workers(bounds)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if on_start is not None:
            on_start()
        workers.lane("filter")
        pulse = asyncio.create_task(_pulse(heartbeat)) if heartbeat is not None else None
        try:
            yield
        finally:
            if pulse is not None:
                pulse.cancel()
                assert heartbeat is not None
                heartbeat.stopped()
            await asyncio.to_thread(workers.stop, wait=True)
            if on_stop is not None:
                on_stop()

    app = VerbsApp(
        title="powercap extender",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    handlers = Handlers(decider, telemetry, bounds.max_candidates)

    async def serve(verb: Verb, request: Request) -> Response:
        lane = workers.lane(verb)
        try:
            async with lane.gate.slot():
                body = await read_body(request, bounds, max_bytes=lane.max_body_bytes)
                if verb in _INLINE_VERBS and len(body) <= bounds.inline_max_bytes:
                    # Small and quick: deciding here beats two thread wake-ups.
                    return handlers.answer(verb, body)
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(lane.pool, handlers.answer, verb, body)
        except Busy as exc:
            telemetry.decided(verb, "busy")
            return _error(
                503, f"{verb}: the extender is busy ({exc}; powercap serve {lane.option}); retry"
            )
        except BodyTooLarge as exc:
            telemetry.decided(verb, "too_large")
            return _error(413, f"{verb}: {exc} ({lane.body_option})", close=True)
        except SlowBody as exc:
            telemetry.decided(verb, "slow_client")
            return _error(408, f"{verb}: {exc} (powercap serve --read-timeout)", close=True)
        except BadLength as exc:
            telemetry.decided(verb, "bad_request")
            return _error(400, f"{verb}: {exc}", close=True)
        except ClientDisconnect:
            # A client that hangs up is its own business: counted, never an error here.
            telemetry.decided(verb, "client_gone")
            log.debug("%s: the client hung up before its request was read", verb)
            return Response(status_code=400)  # nobody is left to read it

    @app.post("/filter")
    async def filter_(request: Request) -> Response:
        return await serve("filter", request)

    @app.post("/prioritize")
    async def prioritize(request: Request) -> Response:
        return await serve("prioritize", request)

    @app.post("/bind")
    async def bind(request: Request) -> Response:
        return await serve("bind", request)

    @app.post("/preempt")
    async def preempt(request: Request) -> Response:
        return await serve("preempt", request)

    # The same handlers as the routes, reached without the framework (see VerbsApp).
    app.verb_handlers = {
        "/filter": filter_,
        "/prioritize": prioritize,
        "/bind": bind,
        "/preempt": preempt,
    }
    _guard(app)
    return app


def _guard(app: FastAPI) -> None:
    @app.exception_handler(Exception)
    async def _unhandled(_: Request, exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc)
        return _error(500, "internal error; the extender's log has the details")
