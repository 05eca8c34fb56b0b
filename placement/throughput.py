"""Throughput as a function of a GPU's power limit, and the limits that cover an overage
at the least priority-weighted throughput lost.

A :class:`ThroughputCurve` maps the power-limit fraction ``f`` (limit / the GPU's default
limit, its TDP) to relative throughput (1.0 at ``f = 1``), piecewise-linear between its
points and refusing fractions below its first point (the floor: the lowest limit the
curve vouches for). Curves are monotone non-decreasing.

The default curve, :data:`DEFAULT_CURVE`, is for H100 SXM (700 W default limit, 200 W
minimum limit as NVML reports it). It is **an assumption kept conservative**, not a
digitised measurement; its anchors, all approximate:

* POLCA (Patel et al., "Characterizing Power Management Opportunities for LLMs in the
  Cloud", ASPLOS'24; arXiv 2308.12908) characterises LLM inference on DGX-A100 and finds
  that capping power costs inference little throughput at moderate caps ("minimal
  performance loss" while deploying 30% more servers). Those are A100 measurements.
* Power capping on Hopper (arXiv 2604.11391, H100/H200 capped from 200 W to 700 W):
  the cap lowers SM clocks and the throughput of compute-bound kernels (DGEMM), while
  memory-bound work is less affected (from the abstract).
* Decode rarely reaches a cap (arXiv 2605.11999: decode draws 137–300 W on a 700 W
  H200, from the abstract).
* Measured vLLM serving on H100 SXM (grantwilkins/powertrace-sim; Llama-3-70B TP4 and
  Llama-3-8B) saturates at 470–511 W per GPU, so a limit at or above ~0.73 of 700 W is
  not reached by that workload at all.

No figure or table of those sources was read off point by point; the points below are
chosen *below* what those findings suggest (more throughput lost than they report), so
the planner and the controller err towards over-estimating the cost of a limit.
Override it per service (``throughputCurve`` in a scenario) with your own measurements.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from placement.frozen import read_only

Point = tuple[float, float]


def check_points(points: Sequence[Sequence[float]], where: str = "throughputCurve") -> None:
    """Raise ``ValueError`` naming ``where`` and the fix unless ``points`` is a valid curve:
    at least one point; fractions strictly increasing in (0, 1]; throughput in (0, 1],
    non-decreasing; the last point ``[1.0, 1.0]``."""
    pts = [tuple(p) for p in points]
    if not pts:
        raise ValueError(f"{where}: give at least the point [1.0, 1.0]")
    for i, p in enumerate(pts):
        if len(p) != 2 or not all(math.isfinite(float(v)) for v in p):
            raise ValueError(
                f"{where}[{i}]: a point is [fraction of the default limit, throughput]"
            )
        f, t = float(p[0]), float(p[1])
        if not 0.0 < f <= 1.0:
            raise ValueError(
                f"{where}[{i}]: fraction {f:g} is outside (0, 1]; write limits as a fraction "
                "of the GPU's default limit"
            )
        if not 0.0 < t <= 1.0:
            raise ValueError(
                f"{where}[{i}]: throughput {t:g} is outside (0, 1]; it is relative to the "
                "default limit's"
            )
        if i and f <= float(pts[i - 1][0]):
            raise ValueError(f"{where}[{i}]: fractions must increase strictly; sort the points")
        if i and t < float(pts[i - 1][1]):
            raise ValueError(
                f"{where}[{i}]: throughput falls from {float(pts[i - 1][1]):g} to {t:g} as the "
                "limit rises; a curve must be non-decreasing"
            )
    if (float(pts[-1][0]), float(pts[-1][1])) != (1.0, 1.0):
        raise ValueError(f"{where}: the last point must be [1.0, 1.0] (the default limit)")


@dataclass(frozen=True)
class ThroughputCurve:
    """Relative throughput vs power-limit fraction; see the module docstring."""

    points: tuple[Point, ...]
    source: str = ""

    def __post_init__(self) -> None:
        pts = tuple((float(f), float(t)) for f, t in self.points)
        check_points(pts)
        object.__setattr__(self, "points", pts)

    @property
    def floor(self) -> float:
        """The lowest fraction the curve vouches for."""
        return self.points[0][0]

    @property
    def concave(self) -> bool:
        """Whether slopes never rise as the fraction grows (the greedy is then exact)."""
        slopes = self._slopes()
        return bool(np.all(np.diff(slopes) <= 1e-12))

    def _slopes(self) -> NDArray[np.float64]:
        xs = np.array([p[0] for p in self.points])
        ys = np.array([p[1] for p in self.points])
        return np.diff(ys) / np.diff(xs) if xs.size > 1 else np.zeros(0)

    def at(self, fraction: float) -> float:
        """Relative throughput at ``fraction``; ``ValueError`` below the floor or above 1."""
        if not self.floor - 1e-9 <= fraction <= 1.0 + 1e-9:
            raise ValueError(
                f"power limit {fraction:.3g} of the default is outside the curve's "
                f"[{self.floor:g}, 1]; raise the limit or extend the curve"
            )
        xs = [p[0] for p in self.points]
        ys = [p[1] for p in self.points]
        return float(np.interp(fraction, xs, ys))


H100_DEFAULT_WATTS = 700.0
H100_MIN_WATTS = 200.0

DEFAULT_CURVE = ThroughputCurve(
    points=(
        (200 / 700, 0.40),
        (0.50, 0.70),
        (0.60, 0.80),
        (0.70, 0.90),
        (0.80, 0.95),
        (0.90, 0.98),
        (1.00, 1.00),
    ),
    source="conservative H100 SXM assumption (docs/power-limits.md)",
)


def parse_limit(value: float | str, default_watts: float, where: str = "powerLimit") -> float:
    """A power limit as a fraction of ``default_watts``: a number in (0, 1] is a fraction,
    a string ``"560W"`` is watts per GPU (a bare number string is a fraction too)."""
    text = str(value).strip()
    watts = text.upper().endswith("W")
    try:
        number = float(text[:-1] if watts else text)
    except ValueError:
        raise ValueError(
            f"{where}: {value!r} is neither a fraction (0.8) nor watts per GPU ('560W')"
        ) from None
    fraction = number / default_watts if watts else number
    if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
        shown = f"{number:g} W of {default_watts:g} W" if watts else f"{number:g}"
        raise ValueError(
            f"{where}: {shown} is outside (0, 1] of the GPU's default limit; give a fraction "
            "such as 0.8 or watts such as '560W'"
        )
    return fraction


def capped_profile(
    profile: NDArray[np.float64], nameplate: float, *, gpus: int, fraction: float, gpu_watts: float
) -> tuple[NDArray[np.float64], float]:
    """A replica's profile and nameplate at a per-GPU limit of ``fraction × gpu_watts``.

    The model: the nameplate (watts above node idle) holds a GPU share,
    ``min(nameplate, gpus × gpu_watts)``, and a non-GPU rest. A limit scales the GPU
    share by ``fraction`` and leaves the rest alone, so the replica can never draw more
    than ``bound = nameplate − (1 − fraction) × GPU share``; the profile is clipped there
    and the nameplate becomes that bound. Clipping never lowers a slot the limit does not
    bind in, so the capped profile is as safe as the measured one; and the bound is at
    least ``fraction × nameplate``, so a nameplate smaller than its GPUs' TDP sum cannot
    make a replica free.
    """
    share = min(nameplate, gpus * gpu_watts)
    bound = nameplate - (1.0 - fraction) * share
    return np.minimum(profile, bound), min(nameplate, bound)


@dataclass(frozen=True)
class GpuSet:
    """GPUs the controller may lower, as parallel arrays (watts per GPU).

    ``weight`` is the priority weight of the pod on the GPU (throughput lost counts
    ``weight × relative throughput``); ``high`` marks GPUs the first threshold must
    not touch (POLCA: low-priority GPUs are capped first, high-priority ones only past
    a second threshold); ``floor`` is the per-profile lowest limit, raised to the
    curve's floor if that is higher; ``curves`` one per GPU.
    """

    current: NDArray[np.float64]
    default: NDArray[np.float64]
    floor: NDArray[np.float64]
    weight: NDArray[np.float64]
    high: NDArray[np.bool_]
    curves: tuple[ThroughputCurve, ...]

    def __post_init__(self) -> None:
        n = len(self.curves)
        for name in ("current", "default", "floor", "weight", "high"):
            arr = np.asarray(getattr(self, name))
            if arr.shape != (n,):
                raise ValueError(f"GpuSet.{name}: {arr.shape} values for {n} GPUs")
            object.__setattr__(self, name, read_only(arr))
        if np.any(self.default <= 0) or np.any(self.weight < 0):
            raise ValueError("GpuSet: default limits must be > 0 and weights >= 0")

    @property
    def size(self) -> int:
        return len(self.curves)

    @property
    def lowest(self) -> NDArray[np.float64]:
        """The lowest limit each GPU may get: its floor, its curve's floor, never above
        the current limit."""
        curve_floor = np.array([c.floor for c in self.curves]) * self.default
        return np.minimum(np.maximum(self.floor, curve_floor), self.current)

    def throughput(self, limits: NDArray[np.float64]) -> NDArray[np.float64]:
        """Relative throughput of each GPU at ``limits`` watts."""
        return np.array(
            [
                c.at(min(1.0, float(x) / float(d)))
                for c, x, d in zip(self.curves, limits, self.default, strict=True)
            ]
        )


@dataclass(frozen=True)
class LimitPlan:
    """New limits (watts per GPU), the watts they free, what stays uncovered, and the
    priority-weighted relative throughput lost."""

    limits: NDArray[np.float64]
    freed: float
    uncovered: float
    lost: float
    used_high: bool = field(default=False)


def _segments(gpus: GpuSet, i: int) -> list[tuple[float, float, float]]:
    """GPU ``i``'s segments from its current limit down to its lowest, top first:
    (watts, weighted throughput lost per watt, lower end in watts)."""
    top, low, d = float(gpus.current[i]), float(gpus.lowest[i]), float(gpus.default[i])
    curve = gpus.curves[i]
    cuts = sorted({top, low} | {f * d for f, _ in curve.points if low < f * d < top}, reverse=True)
    out: list[tuple[float, float, float]] = []
    for hi, lo in itertools.pairwise(cuts):
        loss = curve.at(min(1.0, hi / d)) - curve.at(min(1.0, lo / d))
        out.append((hi - lo, float(gpus.weight[i]) * loss / (hi - lo), lo))
    return out


def _take(
    gpus: GpuSet, members: NDArray[np.int64], need: float, limits: NDArray[np.float64]
) -> float:
    """Lower ``limits`` of ``members`` by ``need`` watts, cheapest segment first; returns
    the watts still missing. Each GPU's segments are offered top down, so a GPU's limit
    only ever moves down contiguously."""
    queues = {int(i): _segments(gpus, int(i)) for i in members}
    heap = [(q[0][1], i, 0) for i, q in queues.items() if q]
    heapq.heapify(heap)
    while need > 1e-9 and heap:
        _, i, k = heapq.heappop(heap)
        watts, _, low = queues[i][k]
        used = min(watts, need)
        limits[i] -= used
        if used == watts:
            limits[i] = low
        need -= used
        if k + 1 < len(queues[i]) and used == watts:
            heapq.heappush(heap, (queues[i][k + 1][1], i, k + 1))
    return max(0.0, need)


def plan_limits(gpus: GpuSet, overage_w: float) -> LimitPlan:
    """Per-GPU limits that free ``overage_w`` watts at the least priority-weighted
    throughput lost: low-priority GPUs first; high-priority GPUs only for what the
    low-priority ones cannot cover (POLCA's second threshold); never below a floor.

    Lowering a limit frees at most ``current − new`` watts (a GPU drawing less than its
    limit frees less, so this is the watts the limits guarantee, not a prediction of
    draw). Within a tier the greedy takes the curve segments with the least weighted
    throughput lost per watt first. For concave curves (slopes falling as the limit
    rises, as :data:`DEFAULT_CURVE`) each GPU's segments come in rising cost, so the
    greedy solves the continuous knapsack exactly: a separable convex cost minimised
    under one linear constraint is optimal when every marginal cost taken is ≤ every
    one left. For non-concave curves it stays feasible and floor-safe but may not be
    optimal.
    """
    if not (math.isfinite(overage_w) and overage_w >= 0):
        raise ValueError("overage_w must be a finite, non-negative number of watts")
    limits = np.array(gpus.current, dtype=np.float64)
    low = np.flatnonzero(~gpus.high)
    missing = _take(gpus, low, overage_w, limits)
    used_high = False
    if missing > 1e-9:
        used_high = True
        missing = _take(gpus, np.flatnonzero(gpus.high), missing, limits)
    before = gpus.throughput(np.asarray(gpus.current, dtype=np.float64))
    after = gpus.throughput(limits)
    lost = float(np.dot(gpus.weight, before - after))
    freed = float((np.asarray(gpus.current) - limits).sum())
    return LimitPlan(limits=limits, freed=freed, uncovered=missing, lost=lost, used_high=used_high)


@dataclass(frozen=True)
class Provisioning:
    """Per-service power limits and throughput terms of a problem (see
    :mod:`placement.provisioning`): the limit the scenario sets (``own``, NaN where none),
    the one in force (``applied``, 1.0 uncapped), the GPU's default limit in watts, the
    curve, one replica's tokens/s at the default limit (NaN: relative units) and the
    profiles and nameplates before clipping."""

    own: NDArray[np.float64]
    applied: NDArray[np.float64]
    gpu_watts: NDArray[np.float64]
    curves: tuple[ThroughputCurve, ...]
    tokens_per_s: NDArray[np.float64]
    base_profiles: NDArray[np.float64]
    base_nameplate: NDArray[np.float64]

    def __post_init__(self) -> None:
        for name in ("own", "applied", "gpu_watts", "tokens_per_s", "base_nameplate"):
            object.__setattr__(
                self, name, read_only(np.array(getattr(self, name), dtype=np.float64))
            )
        object.__setattr__(
            self, "base_profiles", read_only(np.array(self.base_profiles, dtype=np.float64))
        )

    @property
    def in_tokens(self) -> bool:
        """Whether every service gives tokens/s (else throughput is in replica units)."""
        return bool(self.tokens_per_s.size) and bool(np.all(np.isfinite(self.tokens_per_s)))

    def relative_throughput(self) -> NDArray[np.float64]:
        """Per service, one replica's throughput at its applied limit over its uncapped."""
        return np.array([c.at(float(f)) for c, f in zip(self.curves, self.applied, strict=True)])

    def replica_throughput(self) -> NDArray[np.float64]:
        """Per service, one replica's throughput at its applied limit: tokens/s when every
        service gives ``tokensPerSecond``, else relative (1.0 = an uncapped replica)."""
        scale = self.tokens_per_s if self.in_tokens else np.ones(self.applied.size)
        return self.relative_throughput() * scale
