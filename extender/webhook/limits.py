"""The bounds on what one caller can make the extender's verbs hold: bytes, entries,
time and concurrency.

:class:`~extender.webhook.settings.Limits` holds them (``powercap serve`` sets them
from its options); :func:`read_body` reads a request body within the byte limit and the
read deadline; :class:`Gate` admits a bounded number of verb calls at once and a bounded
queue behind them. Headers are bounded before the app sees a request, in
:mod:`extender.webhook.serving`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from extender.webhook.settings import Limits

if TYPE_CHECKING:
    from starlette.requests import Request


class BodyTooLarge(Exception):
    """The body is (or says it is) longer than the limit; ``declared`` is its
    ``Content-Length`` when that was what gave it away."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        self.limit = limit
        self.declared = declared
        size = f"{declared:,} bytes" if declared is not None else "more"
        super().__init__(f"request body of {size}, over the limit of {limit:,} bytes")


class SlowBody(Exception):
    """The body did not arrive within the read deadline."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(f"request body not received within {timeout_s:g} s")


class BadLength(Exception):
    """A ``Content-Length`` header that is not a whole number."""


async def read_body(request: Request, limits: Limits, *, max_bytes: int | None = None) -> bytes:
    """The request's body, read chunk by chunk.

    Raises :class:`BodyTooLarge` before reading anything when ``Content-Length`` is over
    ``max_bytes`` (default ``limits.max_body_bytes``), or as soon as the chunks read pass
    it (a chunked body declares no length), so at most the limit and one chunk are held;
    :class:`SlowBody` when the body takes longer than ``limits.read_timeout_s``;
    :class:`BadLength` for a malformed ``Content-Length``; starlette's
    ``ClientDisconnect`` when the client hangs up."""
    limit = limits.max_body_bytes if max_bytes is None else max_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError as exc:
            raise BadLength(f"Content-Length is not a whole number: {declared[:40]!r}") from exc
        if length > limit:
            raise BodyTooLarge(limit, length)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.read_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(limit)
                chunks.append(chunk)
    except TimeoutError as exc:
        raise SlowBody(limits.read_timeout_s) from exc
    return b"".join(chunks)


class Busy(Exception):
    """Every slot is taken and the queue is full."""

    def __init__(self, running: int, queued: int) -> None:
        self.running = running
        self.queued = queued
        super().__init__(f"{running} calls in progress and {queued} waiting")


class Gate:
    """At most ``running`` holders at once; up to ``queued`` more wait in arrival order;
    the next one is refused with :class:`Busy` at once, never queued without bound.

    For one event loop: the counts are plain integers, changed only on that loop."""

    def __init__(self, running: int, queued: int) -> None:
        if running < 1 or queued < 0:
            raise ValueError("Gate: running must be at least 1 and queued 0 or more")
        self.running = running
        self.queued = queued
        self._free = running
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def in_use(self) -> int:
        """Slots held now."""
        return self.running - self._free

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot now."""
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the block; raises :class:`Busy` when none is free and the
        queue is full."""
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    async def _acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        if len(self._waiters) >= self.queued:
            raise Busy(self.in_use, len(self._waiters))
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # _release hands its slot over by resolving this future
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot while being cancelled: pass it on
            raise

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to the waiter, never back to free
                return
        self._free += 1
