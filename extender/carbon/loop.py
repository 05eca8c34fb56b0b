"""Live carbon-aware caps and the emission budget throttle, in ``powercap serve``.

:class:`CarbonCaps` holds the live caps of one
:class:`~extender.cluster.state.ClusterState`: each :meth:`CarbonCaps.tick` polls the
due sources (one :class:`Zone` per source and the domains it covers), counts emissions,
turns intensity into cap fractions, throttles budgeted domains (:class:`BudgetTracker`)
and hands changed caps to :meth:`ClusterState.set_caps`; it returns a :class:`CarbonTick`.
:class:`CarbonLoop` runs it every period (the shortest of the sources') once the mirror
has synced. The pure steps are functions: :func:`forecast_fractions`,
:func:`window_bounds`, :func:`emitted_kg`, :func:`budget_cap_fraction`, :func:`live_caps`.

What a tick does, and the choices behind it (which slots follow, failures, restoring,
the budget throttle, restarts): docs/carbon.md, "Live caps and the budget throttle".
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
from numpy.typing import NDArray

from extender.carbon.sources import ForecastStatus, IntensityStatus, Resilient, Status
from extender.cluster.state import ClusterState
from extender.config.intensity import BudgetSettings, IntensitySettings
from extender.periodic import PeriodicLoop
from extender.telemetry import GRAMS_PER_KG, CarbonMetrics
from placement.carbon.intensity import IntensitySeries, local_midnight
from placement.carbon.policy import CapPolicy
from placement.grid import Grid

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]

# A tick that comes late (a stalled thread, a suspended process) counts at most this many
# periods of emissions: power and intensity over a longer gap are not known.
MAX_GAP_PERIODS = 3.0


# ---------------------------------------------------------------- pure parts


def forecast_fractions(
    series: IntensitySeries, policy: CapPolicy, grid: Grid, *, now: float
) -> FloatArray:
    """(T,) cap fractions of the slots ahead of ``now`` from a forecast; NaN for the
    current slot and for slots the forecast does not reach.

    Slot ``slot_of(now) + k`` (k = 1 … T−1, modulo T) gets the policy's fraction of the
    forecast's time-weighted mean over ``[slot start + k·step, + step)``, or over the
    part of it the forecast covers."""
    out = np.full(grid.slots, np.nan)
    step = grid.step_s
    start = int(now) - (int(now) + grid.offset_s) % step  # the current slot's start
    current = grid.slot_of(now)
    for k in range(1, grid.slots):
        lo = max(start + k * step, series.start_s)
        hi = min(start + (k + 1) * step, series.end_s)
        if hi <= lo:
            continue
        mean = float(series.mean_between(np.array([lo, hi], dtype=np.int64))[0])
        out[(current + k) % grid.slots] = policy.fraction(mean)
    return out


def window_bounds(window: str, now: float, grid: Grid) -> tuple[int, int]:
    """``[start, end)`` in Unix seconds of the day or calendar month holding ``now``, on
    the grid's clock (UTC shifted by its offset)."""
    day = datetime.fromtimestamp(now + grid.offset_s, UTC).date()
    if window == "day":
        start = local_midnight(grid, day)
        return start, start + 86400
    if window == "month":
        first = day.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        return local_midnight(grid, first), local_midnight(grid, following)
    raise ValueError(f"unknown budget window {window!r}; use day or month")


def emitted_kg(watts: float | FloatArray, g_per_kwh: float, hours: float) -> FloatArray:
    """kg CO2e of drawing ``watts`` for ``hours`` at ``g_per_kwh``: W/1000 · h · g/kWh / 1000."""
    return np.asarray(watts, dtype=np.float64) * g_per_kwh * hours / 1e6


def budget_cap_fraction(
    budget_kg: float,
    emitted: float,
    g_per_kwh: float,
    *,
    hours_left: float,
    cap_w: float,
    floor: float,
) -> float:
    """The largest fraction of ``cap_w`` that, drawn for the ``hours_left`` of the window
    at ``g_per_kwh``, keeps ``emitted`` + the rest within ``budget_kg``; clipped to
    ``[floor, 1]``. A budget already spent gives the floor; a window at its end or a
    zero intensity (nothing more to emit) gives 1."""
    if hours_left <= 0 or g_per_kwh <= 0 or cap_w <= 0:
        return 1.0
    affordable_w = (budget_kg - emitted) * 1e6 / (g_per_kwh * hours_left)
    return float(min(1.0, max(floor, affordable_w / cap_w)))


def live_caps(
    base: FloatArray,
    slot: int,
    scaled: Sequence[tuple[Sequence[int], float, FloatArray | None]],
    *,
    throttles: dict[int, float],
) -> FloatArray:
    """Caps (domains × T) from the configured ``base``. For each ``(domains, now_fraction,
    ahead)`` of ``scaled`` (one per source): the current ``slot`` of those domains scaled
    by ``now_fraction``, their other slots by ``ahead`` where it is not NaN. Then each
    throttled domain's current slot is held at most at ``base × fraction``."""
    caps = np.array(base, dtype=np.float64)
    for domains, now_fraction, ahead in scaled:
        for d in domains:
            if ahead is not None:
                known = ~np.isnan(ahead)
                caps[d, known] = base[d, known] * ahead[known]
            caps[d, slot] = base[d, slot] * now_fraction
    for d, fraction in throttles.items():
        caps[d, slot] = min(caps[d, slot], base[d, slot] * fraction)
    return caps


# ---------------------------------------------------------------- budgets


@dataclass
class BudgetTracker:
    """One budget's window: its bounds and the kg counted (``counted``) or assumed for the
    time before this process ran (``assumed``)."""

    settings: BudgetSettings
    domain: int
    start_s: int = 0
    end_s: int = 0
    counted: float = 0.0
    assumed: float = 0.0
    fraction: float = 1.0  # the last throttle fraction (kept while intensity is unknown)
    projected: float = math.nan

    def roll(self, now: float, grid: Grid, first: bool) -> None:
        """Enter the window holding ``now`` if it is not the current one. On the first
        window of the process the time already gone is assumed at its pro-rata share."""
        if self.start_s <= now < self.end_s:
            return
        self.start_s, self.end_s = window_bounds(self.settings.window, now, grid)
        self.counted = 0.0
        self.fraction = 1.0
        gone = (now - self.start_s) / (self.end_s - self.start_s)
        self.assumed = self.settings.kg * gone if first else 0.0

    @property
    def emitted(self) -> float:
        return self.counted + self.assumed

    @property
    def remaining(self) -> float:
        return self.settings.kg - self.emitted


# ---------------------------------------------------------------- the tick


@dataclass
class Zone:
    """One source, the domains whose caps follow it (``domains``) and the domains whose
    power is on its grid (``covered``: those and everything below them), with what its
    last poll found."""

    settings: IntensitySettings
    source: Resilient
    domains: list[int]
    covered: NDArray[np.bool_]
    next_poll: float = -math.inf
    latest: IntensityStatus | None = None
    forecast: ForecastStatus | None = None

    @property
    def name(self) -> str:
        return self.source.source.name

    @property
    def g_per_kwh(self) -> float | None:
        """The intensity in use, ``None`` when unknown (fallback, or never polled)."""
        reading = self.latest.reading if self.latest is not None else None
        return reading.g_per_kwh if reading is not None else None

    @property
    def now_fraction(self) -> float:
        g = self.g_per_kwh
        if g is not None:
            return self.settings.policy.fraction(g)
        return self.settings.fallback_cap_fraction


@dataclass
class CarbonTick:
    """What one :meth:`CarbonCaps.tick` saw and set. ``g_per_kwh`` is per domain (NaN
    where no source's intensity is known); ``watts`` per domain is the power counted."""

    at: float
    slot: int
    polled: list[str]
    fractions: dict[str, float]  # per source: the current slot's fraction
    g_per_kwh: FloatArray
    caps: FloatArray
    changed: bool
    watts: FloatArray
    counted_kg: FloatArray | None
    cost_eur: FloatArray | None
    throttles: dict[str, float] = field(default_factory=dict)


MeasuredPower = Callable[[float], FloatArray | None]


class CarbonCaps:
    """The live caps of one :class:`ClusterState` (see the module doc).

    ``zones`` pairs each source's settings with its running source. ``base`` is the
    configured caps (domains × T). ``measured(now)`` gives measured watts per domain (NaN
    where unknown) or ``None``; without it the predicted ledger power is used. Raises
    ``ValueError`` when two sources have one name (their metrics would be one series)."""

    def __init__(
        self,
        zones: Sequence[tuple[IntensitySettings, Resilient]],
        state: ClusterState,
        grid: Grid,
        *,
        base: FloatArray,
        metrics: CarbonMetrics | None = None,
        measured: MeasuredPower | None = None,
    ) -> None:
        if not zones:
            raise ValueError("the live caps loop needs at least one intensity source")
        self.state = state
        self.grid = grid
        self.base = np.array(base, dtype=np.float64)
        self.base.setflags(write=False)
        self.metrics = metrics
        self.measured = measured
        tree = state.tree
        self.membership = tree.membership.astype(np.float64)
        self.is_leaf = np.asarray(state.is_leaf, dtype=bool)
        self.zones: list[Zone] = []
        for settings, source in zones:
            if settings.domains is None:
                domains = [int(d) for d in np.flatnonzero(tree.parents < 0)]
            else:
                domains = [tree.index[name] for name in settings.domains]
            covered = np.asarray(tree.membership[domains].any(axis=0), dtype=np.bool_)
            self.zones.append(Zone(settings, source, domains, covered))
        names = [z.name for z in self.zones]
        if len(set(names)) != len(names):
            raise ValueError(f"two intensity sources are the same ({', '.join(names)})")
        self.period_s = min(z.settings.period_s for z in self.zones)
        self.budgets = [
            BudgetTracker(b, tree.index[b.domain]) for z in self.zones for b in z.settings.budgets
        ]
        # The floor a budget may throttle to: the highest of the zones its domain spans.
        self.floors: dict[int, float] = {
            b.domain: max(
                (
                    z.settings.policy.floor
                    for z in self.zones
                    if (z.covered & tree.membership[b.domain]).any()
                ),
                default=max(z.settings.policy.floor for z in self.zones),
            )
            for b in self.budgets
        }
        # Per domain: the EUA price of its zone (NaN where none is configured).
        self.price = np.full(tree.size, np.nan)
        for z in self.zones:
            if z.settings.eua_price_eur_per_t is not None:
                self.price[z.covered] = z.settings.eua_price_eur_per_t
        self.priced = bool(np.isfinite(self.price).any())
        self.last_at: float | None = None
        self.last: CarbonTick | None = None
        self._status: dict[str, Status] = {}
        self._fraction: dict[str, float] = {}
        if metrics is not None:
            for z in self.zones:
                metrics.zero(z.name, tree.names, self.priced)

    def tick(self, now: float) -> CarbonTick:
        """Poll the due sources, count, throttle and set the caps, at wall-clock ``now``."""
        grid = self.grid
        slot = grid.slot_of(now)
        polled = []
        for z in self.zones:
            # A little early counts: ticks come every shortest period, with jitter.
            if now >= z.next_poll - 0.1 * self.period_s:
                z.latest = z.source.latest()
                if z.settings.forecast:
                    z.forecast = z.source.forecast(float(grid.period_s))
                z.next_poll = now + z.settings.period_s
                polled.append(z.name)
        g = np.full(self.state.tree.size, np.nan)
        for z in self.zones:
            if z.g_per_kwh is not None:
                g[z.covered] = z.g_per_kwh

        watts = self._watts(now, slot)
        # Emissions are counted at the leaves, where each domain's power is on one grid,
        # and summed up the tree; leaves of unknown intensity add nothing.
        leaf_w = np.where(self.is_leaf, watts, 0.0)
        leaf_rate = np.where(self.is_leaf & np.isfinite(g), leaf_w * np.nan_to_num(g), 0.0)
        rate_kg_per_h = self.membership @ leaf_rate / 1e6
        known_w = self.membership @ np.where(np.isfinite(g), leaf_w, 0.0)
        counted: FloatArray | None = None
        cost: FloatArray | None = None
        if self.last_at is not None:
            gap_h = min(now - self.last_at, MAX_GAP_PERIODS * self.period_s) / 3600.0
            if gap_h > 0:
                counted = rate_kg_per_h * gap_h
                priced = np.where(np.isfinite(self.price), leaf_rate * self.price, 0.0)
                cost = self.membership @ priced / 1e9 * gap_h  # g → t: 1e6; W → kW: 1e3
        first = self.last_at is None
        self.last_at = now

        throttles: dict[int, float] = {}
        for budget in self.budgets:
            d = budget.domain
            # The gap since the last tick belongs to the window it was spent in.
            if counted is not None:
                budget.counted += float(counted[d])
            budget.roll(now, grid, first)
            if known_w[d] > 0:
                hours_left = (budget.end_s - now) / 3600.0
                budget.projected = budget.emitted + float(rate_kg_per_h[d]) * hours_left
                # The power-weighted intensity of the domain's known zones.
                g_eff = float(rate_kg_per_h[d]) * 1e6 / float(known_w[d])
                budget.fraction = budget_cap_fraction(
                    budget.settings.kg,
                    budget.emitted,
                    g_eff,
                    hours_left=hours_left,
                    cap_w=float(self.base[d, slot]),
                    floor=self.floors[d],
                )
            throttles[d] = min(throttles.get(d, 1.0), budget.fraction)

        scaled = []
        for z in self.zones:
            ahead: FloatArray | None = None
            if z.forecast is not None and z.forecast.series is not None:
                ahead = forecast_fractions(z.forecast.series, z.settings.policy, grid, now=now)
            scaled.append((z.domains, z.now_fraction, ahead))
        caps = live_caps(self.base, slot, scaled, throttles=throttles)
        with self.state.lock:
            changed = not np.array_equal(caps, self.state.tree.caps)
            if changed:
                self.state.set_caps(caps)
        names = self.state.tree.names
        report = CarbonTick(
            now,
            slot,
            polled,
            {z.name: z.now_fraction for z in self.zones},
            g,
            caps,
            changed,
            watts,
            counted,
            cost,
            {names[d]: f for d, f in throttles.items()},
        )
        self._log(report)
        self._export(report)
        self.last = report
        return report

    def _watts(self, now: float, slot: int) -> FloatArray:
        """Per domain: measured power where known, else the predicted power of ``slot``."""
        predicted = np.asarray(self.state.predicted_watts(slot), dtype=np.float64)
        measured = self.measured(now) if self.measured is not None else None
        if measured is None:
            return predicted
        return np.where(np.isfinite(measured), measured, predicted)

    def _log(self, report: CarbonTick) -> None:
        names = self.state.tree.names
        for z in self.zones:
            if z.latest is None:
                continue
            status = z.latest.status
            if status is not self._status.get(z.name):
                if status is Status.LIVE:
                    log.info("carbon intensity from %s is live", z.name)
                else:
                    log.warning(
                        "carbon intensity from %s %s: %s%s",
                        z.name,
                        status,
                        z.latest.error,
                        "; caps at the fallback fraction" if status is Status.FALLBACK else "",
                    )
                self._status[z.name] = status
            fraction = z.now_fraction
            if fraction != self._fraction.get(z.name):
                g = z.g_per_kwh
                log.info(
                    "carbon-aware caps of %s: %.0f%% of configured (%s)",
                    ", ".join(names[d] for d in z.domains),
                    100 * fraction,
                    f"{g:.0f} g/kWh from {z.name}" if g is not None else f"{z.name} on fallback",
                )
                self._fraction[z.name] = fraction
        for name, fraction in report.throttles.items():
            if fraction < 1.0:
                log.info("emission budget holds %s at %.0f%% of its cap", name, 100 * fraction)

    def _export(self, report: CarbonTick) -> None:
        m = self.metrics
        if m is None:
            return
        for z in self.zones:
            if z.latest is None:
                continue
            g = z.g_per_kwh
            m.intensity.labels(z.name).set(g if g is not None else math.nan)
            for status in Status:
                m.status.labels(z.name, str(status)).set(1.0 if z.latest.status is status else 0.0)
            if z.name in report.polled:
                if z.latest.error is not None:
                    m.errors.labels(z.name, "latest").inc()
                if z.forecast is not None and z.forecast.error is not None:
                    m.errors.labels(z.name, "forecast").inc()
        slot = report.slot
        for d, domain in enumerate(self.state.tree.names):
            cap = float(report.caps[d, slot])
            base = float(self.base[d, slot])
            m.cap.labels(domain).set(cap)
            m.cap_ratio.labels(domain).set(cap / base if base > 0 else 1.0)
            if report.counted_kg is not None:
                m.emissions.labels(domain).inc(float(report.counted_kg[d]) * GRAMS_PER_KG)
            if report.cost_eur is not None and self.priced:
                m.cost.labels(domain).inc(float(report.cost_eur[d]))
        for budget in self.budgets:
            labels = (self.state.tree.names[budget.domain], budget.settings.window)
            m.budget_remaining.labels(*labels).set(budget.remaining * GRAMS_PER_KG)
            m.budget_projected.labels(*labels).set(budget.projected * GRAMS_PER_KG)
            m.budget_ratio.labels(*labels).set(budget.fraction)
        m.last_poll.set(report.at)


class CarbonLoop(PeriodicLoop):
    """Runs :meth:`CarbonCaps.tick` every ``period_s`` (the shortest source period) in a
    daemon thread, once the mirror has synced (before that the predicted power is not the
    cluster's)."""

    def __init__(
        self,
        caps: CarbonCaps,
        period_s: float,
        clock: Callable[[], float] = time.time,
        *,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(
            "powercap-carbon",
            caps.tick,
            period_s,
            ready=ready or (lambda: caps.state.synced),
            clock=clock,
        )
        self.caps = caps
