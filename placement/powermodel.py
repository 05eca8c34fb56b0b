"""Load → power for one inference replica: requests per second in, watts above node idle out.

:class:`PowerCurve` maps the request rate of one model instance to watts per GPU
(piecewise-linear between measured points, flat beyond the last) and
:meth:`PowerCurve.replica_watts` gives what the scheduler accounts per replica, above
node idle. :func:`parse_curve` reads a curve written ``"rate:watts,..."``.
:data:`H100_LLAMA70B_TP4` is the measured curve of Llama-3-70B with tensor parallelism 4
on H100 SXM.

The model, its calibration and the measurements behind it: docs/scenarios.md,
"The power curve".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

Point = tuple[float, float]


def _check_points(points: tuple[Point, ...], source: str) -> None:
    """Raise ``ValueError`` unless ``points`` is a usable curve; ``source`` names the input."""
    if len(points) < 2:
        raise ValueError(
            f"{source}: a power curve needs at least two points 'rate:watts', "
            f"e.g. '0:118,2:473'; got {len(points)}"
        )
    for i, (rate, watts) in enumerate(points):
        if not (math.isfinite(rate) and math.isfinite(watts)):
            raise ValueError(f"{source}: point {i + 1} ({rate}:{watts}) is not finite")
        if watts < 0:
            raise ValueError(
                f"{source}: point {i + 1} has negative watts ({watts:g}); "
                "give the mean power per GPU, >= 0"
            )
    if points[0][0] != 0:
        raise ValueError(
            f"{source}: the first point must be at 0 req/s (the loaded-idle draw), "
            f"got {points[0][0]:g} req/s"
        )
    for i in range(1, len(points)):
        if points[i][0] <= points[i - 1][0]:
            raise ValueError(
                f"{source}: request rates must increase strictly from point to point; "
                f"point {i + 1} ({points[i][0]:g} req/s) follows {points[i - 1][0]:g} req/s"
            )
        if points[i][1] < points[i - 1][1]:
            # A curve that falls with load would let a busier replica be accounted lower.
            raise ValueError(
                f"{source}: watts must not fall as the rate rises; point {i + 1} "
                f"({points[i][1]:g} W) is below point {i} ({points[i - 1][1]:g} W)"
            )


def parse_curve(text: str) -> tuple[Point, ...]:
    """Parse ``"rate:watts,rate:watts,..."`` (req/s per model instance → watts per GPU).

    Example: ``"0:118,0.125:134,0.5:408,2:473,4:495"``. The first rate must be 0,
    rates must increase strictly, watts must be >= 0 and must not fall. Raises
    ``ValueError`` naming the offending point and the expected form.
    """
    points: list[Point] = []
    items = [item.strip() for item in text.split(",")]
    if not text.strip():
        raise ValueError("power curve: empty; expected 'rate:watts,...' e.g. '0:118,2:473'")
    for i, item in enumerate(items, start=1):
        parts = item.split(":")
        if len(parts) != 2:
            raise ValueError(
                f"power curve: point {i} {item!r} is not 'rate:watts' "
                "(req/s per instance, watts per GPU), e.g. '0.5:408'"
            )
        try:
            rate, watts = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(
                f"power curve: point {i} {item!r} is not two numbers 'rate:watts', e.g. '0.5:408'"
            ) from None
        points.append((rate, watts))
    result = tuple(points)
    _check_points(result, "power curve")
    return result


@dataclass(frozen=True)
class PowerCurve:
    """Power of one replica as a function of its request rate.

    ``points`` are ``(requests/s per model instance, mean watts per GPU)`` in increasing
    rate order, the first at 0 req/s; beyond the last point power stays flat.
    ``capacity_rps_per_instance`` is the rate an instance is sized to serve (where the
    curve has nearly saturated); :attr:`capacity_rps` is that for the whole replica.
    ``host_dynamic_watts`` is the host's extra draw at capacity, scaled linearly with
    the rate and held flat above capacity.
    """

    points: tuple[Point, ...]
    gpus_per_instance: int = 4
    instances_per_replica: int = 2
    bare_gpu_idle_watts: float = 70.0
    host_dynamic_watts: float = 600.0
    capacity_rps_per_instance: float = 2.0

    def __post_init__(self) -> None:
        points = tuple((float(r), float(w)) for r, w in self.points)
        object.__setattr__(self, "points", points)
        _check_points(points, "power curve")
        if self.gpus_per_instance < 1 or self.instances_per_replica < 1:
            raise ValueError(
                "power curve: gpus_per_instance and instances_per_replica must be >= 1"
            )
        if self.bare_gpu_idle_watts < 0 or self.host_dynamic_watts < 0:
            raise ValueError("power curve: bare_gpu_idle_watts and host_dynamic_watts must be >= 0")
        if points[0][1] < self.bare_gpu_idle_watts:
            raise ValueError(
                f"power curve: a loaded GPU at 0 req/s ({points[0][1]:g} W) cannot draw less "
                f"than a bare idle GPU ({self.bare_gpu_idle_watts:g} W); node idle already "
                "includes the bare idle, so lower bare_gpu_idle_watts or fix the curve"
            )
        if not self.capacity_rps_per_instance > 0:
            raise ValueError("power curve: capacity_rps_per_instance must be > 0")

    @property
    def gpus_per_replica(self) -> int:
        return self.gpus_per_instance * self.instances_per_replica

    @property
    def capacity_rps(self) -> float:
        """Requests per second one replica is sized to serve."""
        return self.capacity_rps_per_instance * self.instances_per_replica

    @property
    def idle_watts(self) -> float:
        """Watts above node idle of a replica with the model loaded and no requests."""
        return float(self.replica_watts(np.zeros(1))[0])

    @property
    def max_watts(self) -> float:
        """Watts above node idle of a saturated replica (the most the curve gives)."""
        top = self.points[-1][1]
        return self.gpus_per_replica * (top - self.bare_gpu_idle_watts) + self.host_dynamic_watts

    def gpu_watts(self, rate_per_instance: ArrayLike) -> NDArray[np.float64]:
        """Mean watts per GPU (bare idle included) at the given rates per instance."""
        rates = np.asarray(rate_per_instance, dtype=np.float64)
        xs = np.fromiter((p[0] for p in self.points), dtype=np.float64)
        ys = np.fromiter((p[1] for p in self.points), dtype=np.float64)
        return np.interp(rates, xs, ys)

    def replica_watts(self, rate_per_replica: ArrayLike) -> NDArray[np.float64]:
        """Watts above node idle of one replica at each given rate (req/s per replica).

        Vectorised over any array shape. Raises ``ValueError`` on negative or
        non-finite rates.
        """
        rates = np.asarray(rate_per_replica, dtype=np.float64)
        if rates.size and not (np.isfinite(rates).all() and (rates >= 0).all()):
            raise ValueError("request rates must be finite and >= 0")
        gpu = self.gpu_watts(rates / self.instances_per_replica) - self.bare_gpu_idle_watts
        load = np.clip(rates / self.capacity_rps, 0.0, 1.0)
        return self.gpus_per_replica * gpu + self.host_dynamic_watts * load


H100_LLAMA70B_TP4 = PowerCurve(
    points=parse_curve("0:118,0.125:134,0.5:408,2:473,4:495"),
    gpus_per_instance=4,
    instances_per_replica=2,
    bare_gpu_idle_watts=70.0,
    host_dynamic_watts=600.0,
    capacity_rps_per_instance=2.0,
)
"""Llama-3-70B, TP4 on H100 SXM, two instances per 8-GPU replica (see the module doc):
384 W above node idle with no requests, ~3,820 W at its 4 req/s capacity, 4,000 W
saturated."""
