"""A daemon thread that calls ``tick(now)`` every period once the cluster mirror has
synced: the loop of the companion controller and of the live carbon caps."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# Until ``ready``, look again this often rather than a whole period later.
NOT_READY_RETRY_S = 0.5


class PeriodicLoop:
    """Calls ``tick(clock())`` every ``period_s`` (measured from the start of each call) in
    a daemon thread named ``name``, once ``ready()``. An exception from one tick is logged
    and the loop goes on."""

    def __init__(
        self,
        name: str,
        tick: Callable[[float], object],
        period_s: float,
        *,
        ready: Callable[[], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.tick = tick
        self.period_s = period_s
        self.ready = ready
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            ready = self.ready()
            if ready:
                try:
                    self.tick(self.clock())
                except Exception:  # the loop outlives one bad period
                    log.exception("%s: tick failed", self.name)
            spent = time.monotonic() - started
            wait = self.period_s if ready else min(self.period_s, NOT_READY_RETRY_S)
            if self._stop.wait(max(0.0, wait - spent)):
                return

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
