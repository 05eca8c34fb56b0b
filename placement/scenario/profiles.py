"""Power profiles from the shorthands scenarios and the config share: T values, diurnal
shapes, constants, CSV files (:func:`profile_values`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from placement.grid import Grid, parse_duration
from placement.scenario.profile_csv import csv_profile
from placement.scenario.spec import DiurnalSpec, ProfileRef


def parse_time_of_day(text: str) -> int:
    """Seconds after midnight of ``HH:MM``."""
    try:
        hh, mm = text.split(":")
        h, m = int(hh), int(mm)
    except ValueError as exc:
        raise ValueError(f"expected a time of day HH:MM, got {text!r}") from exc
    if not (0 <= h < 24 and 0 <= m < 60):
        raise ValueError(f"expected a time of day HH:MM, got {text!r}")
    return h * 3600 + m * 60


def diurnal_profile(spec: DiurnalSpec, grid: Grid) -> NDArray[np.float64]:
    """Sample a wrapped Gaussian bump at the middle of every slot."""
    centre = parse_time_of_day(spec.peak_at)
    fwhm = parse_duration(spec.width)
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    mids = (np.arange(grid.slots) + 0.5) * grid.step_s
    delta = np.abs(mids - centre) % grid.period_s
    delta = np.minimum(delta, grid.period_s - delta)
    shape = np.exp(-0.5 * (delta / sigma) ** 2)
    return spec.low + (spec.high - spec.low) * shape


def profile_values(
    profile: list[float] | ProfileRef,
    grid: Grid,
    base_dir: Path,
    *,
    not_finite: str = "is not a finite number of watts",
) -> NDArray[np.float64]:
    """The read-only (T,) watts of a profile given as T values or a shorthand (diurnal,
    constant, CSV; a CSV path is relative to ``base_dir``).

    Raises ``ValueError`` saying why not, e.g. ``143 values, the grid has 144 slots``;
    a non-finite value is reported as ``value {i} {not_finite}``.
    """
    if isinstance(profile, list):
        values = np.asarray(profile, dtype=np.float64)
    else:
        given = [k for k in ("diurnal", "constant", "csv") if getattr(profile, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of a list of values, diurnal, constant or csv")
        if profile.diurnal is not None:
            values = diurnal_profile(profile.diurnal, grid)
        elif profile.constant is not None:
            values = np.full(grid.slots, float(profile.constant))
        else:
            assert profile.csv is not None
            values = csv_profile(profile.csv, grid, base_dir)
    if values.shape != (grid.slots,):
        raise ValueError(f"{values.size} values, the grid has {grid.slots} slots")
    if not np.isfinite(values).all():
        raise ValueError(f"value {int(np.flatnonzero(~np.isfinite(values))[0])} {not_finite}")
    if (values < 0).any():
        bad = int(np.flatnonzero(values < 0)[0])
        raise ValueError(f"value {bad} is negative ({values[bad]:g} W); watts must be >= 0")
    values.setflags(write=False)
    return values
