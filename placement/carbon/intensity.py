"""Grid carbon intensity: a time series in gCO2e/kWh, and putting it on the grid.

:class:`IntensitySeries` holds UTC timestamps and values (read from CSV by
:mod:`placement.carbon.intensity_csv`; :class:`Unit`, :func:`parse_unit` and
:func:`parse_zone` check units and time zones). A series is a step function: each sample
holds from its timestamp until the next one (the last holds for the series' typical
spacing). Resampling takes the time-weighted mean of that step function over each slot,
so a 30-minute series on a 10-minute grid and a 15-minute series on a 2-hour grid are both
exact, not nearest-sample guesses: :func:`on_grid` gives a (T,) profile of one day (or the
mean of several), :func:`on_window` a :class:`SlotWindow` of consecutive slots
(:func:`day_window`, :func:`month_window`). :func:`local_midnight` and
:func:`period_start` place a day on the grid's clock; :func:`whole_days` lists the days
whose whole grid period a series covers. More: docs/carbon.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
from numpy.typing import NDArray

from placement.frozen import read_only
from placement.grid import Grid

_POUND_KG = 0.45359237


class Unit(StrEnum):
    """Units a CSV may carry; every series is held in g/kWh."""

    g_per_kwh = "g/kWh"
    kg_per_mwh = "kg/MWh"
    lbs_per_mwh = "lbs/MWh"

    @property
    def to_g_per_kwh(self) -> float:
        """Factor turning a value in this unit into g/kWh."""
        # kg/MWh = 1000 g / 1000 kWh; lbs/MWh = 453.59237 g / 1000 kWh.
        return {"g/kWh": 1.0, "kg/MWh": 1.0, "lbs/MWh": _POUND_KG}[self.value]


_UNIT_ALIASES = {
    "g/kwh": Unit.g_per_kwh,
    "gco2/kwh": Unit.g_per_kwh,
    "gco2e/kwh": Unit.g_per_kwh,
    "kg/mwh": Unit.kg_per_mwh,
    "kgco2/mwh": Unit.kg_per_mwh,
    "kgco2e/mwh": Unit.kg_per_mwh,
    "lbs/mwh": Unit.lbs_per_mwh,
    "lb/mwh": Unit.lbs_per_mwh,
}


def parse_unit(text: str | Unit) -> Unit:
    """``"g/kWh"``, ``"kg/MWh"`` or ``"lbs/MWh"`` (case and a CO2/CO2e tag ignored)."""
    if isinstance(text, Unit):
        return text
    unit = _UNIT_ALIASES.get(text.strip().lower().replace(" ", ""))
    if unit is None:
        raise ValueError(
            f"unknown intensity unit {text!r}; use one of {', '.join(u.value for u in Unit)}"
        )
    return unit


def parse_zone(name: str) -> ZoneInfo:
    """An IANA time zone (``Europe/London``, ``UTC``); ``ValueError`` naming the fix."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None


@dataclass(frozen=True)
class IntensitySeries:
    """Carbon intensity samples: ``times`` in Unix seconds (UTC), strictly increasing;
    ``values`` in gCO2e/kWh. Each value holds until the next timestamp."""

    times: NDArray[np.int64]
    values: NDArray[np.float64]
    source: str = ""

    def __post_init__(self) -> None:
        if self.times.shape != self.values.shape or self.times.ndim != 1:
            raise ValueError("times and values must be 1-D arrays of the same length")
        if self.times.size == 0:
            raise ValueError("an intensity series needs at least one sample")
        if np.any(np.diff(self.times) <= 0):
            raise ValueError("intensity timestamps must be strictly increasing")
        if not np.all(np.isfinite(self.values)) or np.any(self.values < 0):
            raise ValueError("intensity values must be finite and non-negative")
        read_only(self.times)
        read_only(self.values)

    @staticmethod
    def from_arrays(
        times: Sequence[float] | NDArray[np.int64],
        values: Sequence[float] | NDArray[np.float64],
        source: str = "",
    ) -> IntensitySeries:
        return IntensitySeries(
            np.array(times, dtype=np.int64), np.array(values, dtype=np.float64), source
        )

    @property
    def spacing_s(self) -> int:
        """The typical (median) gap between samples; how long the last sample holds.
        A one-sample series holds for an hour."""
        if self.times.size < 2:
            return 3600
        return int(np.median(np.diff(self.times)))

    @property
    def start_s(self) -> int:
        return int(self.times[0])

    @property
    def end_s(self) -> int:
        """End of the covered span: the last sample plus its hold."""
        return int(self.times[-1]) + self.spacing_s

    def mean_between(self, edges: NDArray[np.int64]) -> NDArray[np.float64]:
        """Time-weighted mean of the step function between consecutive ``edges``
        (Unix seconds, increasing): ``len(edges) - 1`` values.

        Raises ``ValueError`` when the edges reach outside the covered span.
        """
        edges = np.asarray(edges, dtype=np.int64)
        if edges.size < 2 or np.any(np.diff(edges) <= 0):
            raise ValueError("edges must be at least two increasing instants")
        if edges[0] < self.start_s or edges[-1] > self.end_s:
            raise ValueError(
                f"intensity{' in ' + self.source if self.source else ''} covers "
                f"{_iso(self.start_s)} to {_iso(self.end_s)}; asked for "
                f"{_iso(int(edges[0]))} to {_iso(int(edges[-1]))}"
            )
        knots = np.append(self.times, self.end_s).astype(np.float64)
        # The integral of a step function is piecewise linear between knots, so
        # interpolating it at the edges is exact.
        integral = np.concatenate(([0.0], np.cumsum(self.values * np.diff(knots))))
        at = np.interp(edges.astype(np.float64), knots, integral)
        return np.diff(at) / np.diff(edges).astype(np.float64)


def _iso(unix_s: int) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class SlotWindow:
    """Intensity over consecutive grid slots from ``start_s`` (Unix seconds, a slot
    boundary): ``intensity[k]`` is the mean over ``[start_s + k·step, … + step)``."""

    grid: Grid
    start_s: int
    intensity: NDArray[np.float64]

    def __post_init__(self) -> None:
        read_only(self.intensity)

    @property
    def slots(self) -> int:
        return int(self.intensity.size)

    @property
    def hours(self) -> float:
        return self.slots * self.grid.step_hours

    @property
    def grid_slots(self) -> NDArray[np.int64]:
        """The periodic grid slot of each window slot: where a profile value comes from."""
        k = np.arange(self.slots, dtype=np.int64)
        return (
            (self.start_s + self.grid.offset_s + k * self.grid.step_s) % self.grid.period_s
        ) // (self.grid.step_s)

    @property
    def edges_s(self) -> NDArray[np.int64]:
        return self.start_s + np.arange(self.slots + 1, dtype=np.int64) * self.grid.step_s

    def label(self) -> str:
        """``2020-06-01 00:00 UTC + 24h``, for tables and reports."""
        return f"{_iso(self.start_s)} + {self.hours:g}h"


def local_midnight(grid: Grid, day: date) -> int:
    """Unix seconds of ``day``'s midnight on the grid's clock (UTC shifted by its offset)."""
    midnight = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    return midnight - grid.offset_s


def period_start(grid: Grid, day: date) -> int:
    """Start of the grid period (slot 0) that holds ``day``'s midnight."""
    at = local_midnight(grid, day)
    return at - (at + grid.offset_s) % grid.period_s


def on_window(series: IntensitySeries, grid: Grid, start_s: int, *, slots: int) -> SlotWindow:
    """Mean intensity in each of ``slots`` consecutive slots from ``start_s``, which is
    moved back to a slot boundary if it falls inside one."""
    if slots <= 0:
        raise ValueError("a window needs at least one slot")
    start = start_s - (start_s + grid.offset_s) % grid.step_s
    edges = start + np.arange(slots + 1, dtype=np.int64) * grid.step_s
    return SlotWindow(grid, start, series.mean_between(edges))


def day_window(series: IntensitySeries, grid: Grid, day: date) -> SlotWindow:
    """``day`` from its midnight on the grid's clock, one slot per step."""
    return on_window(series, grid, local_midnight(grid, day), slots=86400 // grid.step_s)


def month_window(series: IntensitySeries, grid: Grid, day: date) -> SlotWindow:
    """The calendar month holding ``day``, from its first midnight on the grid's clock."""
    first = day.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    days = (following - first).days
    return on_window(series, grid, local_midnight(grid, first), slots=days * 86400 // grid.step_s)


def on_grid(
    series: IntensitySeries, grid: Grid, day: date, *, days: int = 1
) -> NDArray[np.float64]:
    """A (T,) periodic profile: the mean intensity in each grid slot over ``days``
    consecutive periods from the one holding ``day``. With ``days=1`` it is that day's
    intensity on the grid — the forecast a cap schedule is made from."""
    if days <= 0:
        raise ValueError("days must be positive")
    window = on_window(series, grid, period_start(grid, day), slots=grid.slots * days)
    return window.intensity.reshape(days, grid.slots).mean(axis=0)


def whole_days(series: IntensitySeries, grid: Grid) -> list[date]:
    """Days whose whole grid period the series covers, in order."""
    first = datetime.fromtimestamp(series.start_s, UTC).date() - timedelta(days=1)
    last = datetime.fromtimestamp(series.end_s, UTC).date() + timedelta(days=1)
    out: list[date] = []
    day = first
    while day <= last:
        start = period_start(grid, day)
        if start >= series.start_s and start + grid.period_s <= series.end_s:
            out.append(day)
        day += timedelta(days=1)
    return out
