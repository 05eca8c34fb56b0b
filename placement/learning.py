"""Learned profiles: per-slot quantiles of measured watts per replica.

:func:`learn_profile` (one service) and :func:`learn_profiles` (each service of a mapping)
take ``(unix seconds, watts)`` samples, one per replica per observation and already above
node idle, pool them by slot of the grid (:func:`slots_of`) over every day of the history,
and return a :class:`LearnedProfile`: the chosen quantile per slot
(:func:`slot_quantiles`, p95 by default), which slots were thin, filled or clamped to 0.
A slot with fewer than ``min_samples`` samples is thin, never silently zero: with the fill
policy ``none`` it stays NaN and the profile is incomplete (:func:`thin_problems` says which
slots and why); with ``nearest`` it takes the nearest slot that is not thin, round the
period (:func:`fill_nearest`). Everything is vectorised: one sort of all samples, not a
loop over slots.

How ``powercap profiles learn`` and the refresh while serving use it: docs/power.md,
"Learned profiles".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from placement.grid import Grid

FillPolicy = Literal["none", "nearest"]
FILL_POLICIES: tuple[FillPolicy, ...] = ("none", "nearest")
DEFAULT_QUANTILE = 0.95
DEFAULT_MIN_SAMPLES = 10


@dataclass(frozen=True)
class LearnedProfile:
    """One service's learned profile on a grid of T slots.

    ``profile`` is the quantile per slot after the fill policy, NaN in thin slots that
    were not filled; ``counts`` the samples per slot; ``thin`` the slots with fewer than
    ``min_samples``; ``filled`` the thin slots given a neighbour's value; ``clamped`` the
    slots whose quantile was negative and is written as 0."""

    service: str
    quantile: float
    min_samples: int
    profile: NDArray[np.float64]
    counts: NDArray[np.int64]
    thin: NDArray[np.bool_]
    filled: NDArray[np.bool_]
    clamped: NDArray[np.bool_]
    dropped: int = 0  # samples that were NaN or infinite, left out

    @property
    def samples(self) -> int:
        """Samples used (every finite one)."""
        return int(self.counts.sum())

    @property
    def complete(self) -> bool:
        """Every slot has a value: no thin slot, or every thin slot filled."""
        return bool(np.isfinite(self.profile).all())

    @property
    def coverage(self) -> float:
        """Share of slots with at least ``min_samples`` samples (0..1)."""
        return float(1.0 - self.thin.mean())


def slots_of(times: ArrayLike, grid: Grid) -> NDArray[np.int64]:
    """The slot of every instant, as :meth:`Grid.slot_of` computes it one at a time."""
    seconds = np.floor(np.asarray(times, dtype=np.float64)).astype(np.int64)
    return ((seconds + grid.offset_s) % grid.period_s) // grid.step_s


def slot_quantiles(
    slots: NDArray[np.int64], watts: NDArray[np.float64], slot_count: int, *, quantile: float
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """The ``quantile`` of ``watts`` in every slot (NaN where a slot has no sample) and the
    number of samples per slot.

    The same value as ``np.quantile(watts[slots == t], quantile)`` (linear
    interpolation between order statistics, numpy's default), for every slot at once:
    one sort by (slot, watts), then each slot's order statistics are read at its offset."""
    counts = np.bincount(slots, minlength=slot_count).astype(np.int64)
    out = np.full(slot_count, np.nan)
    if watts.size == 0:
        return out, counts
    order = np.lexsort((watts, slots))
    ordered = watts[order]
    starts = np.cumsum(counts) - counts
    have = counts > 0
    n = counts[have]
    # numpy's virtual index and interpolation for its linear method, spelt as numpy
    # spells them, so that the result agrees with np.quantile to the last bit.
    virtual = (n - 1) * quantile
    below = np.floor(virtual)
    frac = virtual - below
    lo = starts[have] + below.astype(np.int64)
    hi = starts[have] + np.minimum(below.astype(np.int64) + 1, counts[have] - 1)
    a = ordered[lo]
    b = ordered[hi]
    diff = b - a
    # numpy's lerp: from the nearer end, so an interpolation at frac 1 is exactly b.
    out[have] = np.where(frac >= 0.5, b - diff * (1.0 - frac), a + diff * frac)
    return out, counts


def fill_nearest(values: NDArray[np.float64], ok: NDArray[np.bool_]) -> NDArray[np.float64]:
    """``values`` with every slot that is not ``ok`` replaced by the value of the nearest
    ``ok`` slot round the period (at equal distance, the larger of the two). All NaN
    when no slot is ok."""
    size = values.size
    good = np.flatnonzero(ok)
    if good.size == 0:
        return np.full(size, np.nan)
    # The good slots one period before and after too, so the search wraps at midnight.
    ring = np.concatenate((good - size, good, good + size))
    t = np.arange(size)
    pos = np.searchsorted(ring, t)
    after = ring[pos]
    before = ring[pos - 1]
    after_v = values[after % size]
    before_v = values[before % size]
    to_after = after - t
    to_before = t - before
    nearest = np.where(
        to_after < to_before,
        after_v,
        np.where(to_before < to_after, before_v, np.maximum(after_v, before_v)),
    )
    return np.where(ok, values, nearest)


def learn_profile(
    service: str,
    times: ArrayLike,
    watts: ArrayLike,
    *,
    grid: Grid,
    quantile: float = DEFAULT_QUANTILE,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    fill: FillPolicy = "none",
) -> LearnedProfile:
    """Learn one service's profile from samples (see the module docstring).

    ``times`` are unix seconds, ``watts`` the watts of one replica above node idle at
    that instant, one pair per replica observation. Raises ``ValueError`` for a
    quantile outside [0, 1], ``min_samples`` below 1, an unknown fill policy or
    arrays of different lengths."""
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], got {quantile!r}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be at least 1, got {min_samples!r}")
    if fill not in FILL_POLICIES:
        raise ValueError(f"fill must be one of {', '.join(FILL_POLICIES)}, got {fill!r}")
    t = np.asarray(times, dtype=np.float64).ravel()
    w = np.asarray(watts, dtype=np.float64).ravel()
    if t.shape != w.shape:
        raise ValueError(f"{t.size} times for {w.size} watts")
    keep = np.isfinite(t) & np.isfinite(w)
    dropped = int(keep.size - keep.sum())
    slots = slots_of(t[keep], grid)
    values, counts = slot_quantiles(slots, w[keep], grid.slots, quantile=quantile)
    thin = counts < min_samples
    clamped = np.zeros(grid.slots, dtype=np.bool_)
    clamped[~thin] = values[~thin] < 0
    values = np.where(clamped, 0.0, values)
    if fill == "nearest":
        profile = fill_nearest(values, ~thin)
        filled = thin & np.isfinite(profile)
    else:
        profile = np.where(thin, np.nan, values)
        filled = np.zeros(grid.slots, dtype=np.bool_)
    for array in (profile, counts, thin, filled, clamped):
        array.setflags(write=False)
    return LearnedProfile(
        service, quantile, min_samples, profile, counts, thin, filled, clamped, dropped
    )


def learn_profiles(
    samples: Mapping[str, tuple[ArrayLike, ArrayLike]],
    grid: Grid,
    quantile: float = DEFAULT_QUANTILE,
    *,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    fill: FillPolicy = "none",
) -> dict[str, LearnedProfile]:
    """:func:`learn_profile` for every service of ``samples`` (``{service: (times,
    watts)}``), in name order."""
    return {
        name: learn_profile(
            name, *samples[name], grid=grid, quantile=quantile, min_samples=min_samples, fill=fill
        )
        for name in sorted(samples)
    }


def slot_runs(mask: NDArray[np.bool_]) -> list[tuple[int, int]]:
    """Runs of consecutive ``True`` slots as inclusive ``(first, last)`` pairs, a run
    across the end of the period joined into one (``first > last`` then)."""
    size = mask.size
    if size == 0 or not mask.any():
        return []
    if mask.all():
        return [(0, size - 1)]
    edges = np.diff(mask.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    runs = [(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]
    if len(runs) > 1 and runs[0][0] == 0 and runs[-1][1] == size - 1:
        runs = [(runs[-1][0], runs[0][1]), *runs[1:-1]]
    return runs


def _run_label(grid: Grid, first: int, last: int) -> str:
    end = grid.slot_label((last + 1) % grid.slots)
    return f"{grid.slot_label(first)}–{end}"


def thin_problems(learned: LearnedProfile, grid: Grid) -> list[str]:
    """One line per run of thin slots that is left without a value: where it is (times
    of day), how many samples its slots have, and the minimum asked for. Empty when
    the profile is complete."""
    missing = ~np.isfinite(learned.profile)
    if not learned.thin.any() or not missing.any():
        return []
    lines: list[str] = []
    for first, last in slot_runs(missing):
        slots = (np.arange(first, first + (last - first) % grid.slots + 1)) % grid.slots
        counts = learned.counts[slots]
        if slots.size == grid.slots:
            where = f"all {slots.size} slots"
        else:
            plural = "s" if slots.size != 1 else ""
            where = f"{slots.size} slot{plural} {_run_label(grid, first, last)}"
        lines.append(
            f"{learned.service}: {where} with {int(counts.min())}–{int(counts.max())} "
            f"samples (at least {learned.min_samples} wanted)"
        )
    return lines
