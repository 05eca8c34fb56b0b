"""Re-learning profiles while serving, and applying them to the running config."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from extender.config.learn import LearnRefreshSettings
from extender.profiles.samples import (
    LearnError,
    LearnResult,
    LearnSettings,
    RangeClient,
    default_query,
    learn,
    prometheus_client,
    promql_label,
)
from placement.grid import Grid
from placement.learning import (
    thin_problems,
)

if TYPE_CHECKING:
    from extender.config.model import Config


log = logging.getLogger(__name__)


# --- re-learning while serving -----------------------------------------------------------------
def settings_for(refresh: LearnRefreshSettings, grid: Grid, now: float) -> LearnSettings:
    """The learner's settings for a refresh at ``now``: the ``since`` before it."""
    label = promql_label(refresh.service_label)
    query = refresh.query or default_query(
        label, refresh.gpu_idle_w, refresh.metric, labels_metric=refresh.labels_metric
    )
    return LearnSettings(
        url=refresh.url,
        query=query,
        service_label=label,
        grid=grid,
        start=now - refresh.since_s,
        end=now,
        resolution_s=refresh.resolution_s,
        chunk_s=refresh.chunk_s,
        quantile=refresh.quantile,
        min_samples=refresh.min_samples,
        fill=refresh.fill,
    )


def apply_learned(config: Config, result: LearnResult) -> tuple[Config, list[str]]:
    """``config`` with every completely learned profile in place: the named profile of the
    service's name is set (added or replaced), and so is the profile of the service of
    that name, whatever profile it was configured with. An incomplete profile changes
    nothing (the configured one stays); the returned lines say which and why."""
    profiles = dict(config.profiles)
    services = dict(config.services)
    kept: list[str] = []
    for name, lp in result.learned.items():
        if lp.profile.shape != (config.grid.slots,):
            kept.append(
                f"{name}: learned on {lp.profile.size} slots, the grid has {config.grid.slots}"
            )
            continue
        if not lp.complete:
            thin = "; ".join(thin_problems(lp, config.grid))
            kept.append(f"{name}: kept the configured profile: {thin}")
            continue
        profiles[name] = lp.profile
        entry = services.get(name)
        if entry is not None:
            services[name] = replace(entry, profile=lp.profile, profile_name=name)
    return replace(config, profiles=profiles, services=services), kept


class ProfileRefresher:
    """Re-learns profiles every ``settings.interval_s`` in a thread and hands each new
    config to ``on_config`` (which swaps it in). The first refresh runs at ``start``.

    A failed refresh (Prometheus down, a refused query, no samples) changes nothing:
    the profiles in use stay, ``last_error`` says why and the next interval retries."""

    def __init__(
        self,
        settings: LearnRefreshSettings,
        current: Callable[[], Config],
        on_config: Callable[[Config], None],
        *,
        client: RangeClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.current = current
        self.on_config = on_config
        self.client: RangeClient = (
            client if client is not None else prometheus_client(settings.url, settings.timeout_s)
        )
        self.clock = clock
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.kept: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh_once(self) -> bool:
        """One refresh; ``True`` when a new config was handed over."""
        config = self.current()
        now = self.clock()
        try:
            result = learn(self.client, settings_for(self.settings, config.grid, now))
        except LearnError as exc:
            self.last_error = str(exc)
            log.warning("profile refresh failed, profiles unchanged: %s", exc)
            return False
        if not result.learned:
            self.last_error = "no samples in the window: no service learned"
            log.warning("profile refresh found no samples; profiles unchanged")
            return False
        new, self.kept = apply_learned(config, result)
        for line in self.kept:
            log.warning("profile refresh: %s", line)
        self.on_config(new)
        self.last_success, self.last_error = now, None
        log.info(
            "profiles refreshed: %s",
            ", ".join(
                n for n in result.learned if n in new.profiles and result.learned[n].complete
            ),
        )
        return True

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.wait(delay):
            try:
                self.refresh_once()
            except Exception:  # a bug must not end the loop: the profiles in use stay
                log.exception("profile refresh failed")
            delay = self.settings.interval_s

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="powercap-learn", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
