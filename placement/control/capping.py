"""The first rung of the ladder: GPU power limits for one domain, down on a breach and back
step by step when headroom returns.

:func:`plan_cap` sizes the cap step of a breached domain from its :class:`NodeGpus` (one
entry per node: its GPUs' limits as the node's ``NodePowerLimit`` status reports them,
whether its agent can set limits, the highest priority of its pods and their floor) with
:func:`placement.throughput.plan_limits`; :func:`plan_uncap` sizes a raising step.
Both return :class:`LimitChange` entries, one per node; :class:`CapSettings` holds the
margin, the two thresholds, the floor and the restore step.

Every GPU of a node gets the same limit: which GPU a pod holds is the device plugin's
choice and is not visible through the Kubernetes API, and a tensor-parallel replica runs
at the pace of its slowest GPU anyway. A node therefore counts as high priority when any
of its pods is (its highest PriorityClass value at or above ``high_priority``), and its
floor is the highest floor among its pods.

The rules and the choices behind them: docs/controller.md, "Power limits (the first rung)".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from placement.throughput import DEFAULT_CURVE, GpuSet, ThroughputCurve, plan_limits

# A step that moves limits by less than this (watts, whole domain) is not worth a write.
MIN_STEP_W = 1.0

# A GPU drawing within this fraction of its default limit below its limit is held by it.
BINDING = 0.02


@dataclass(frozen=True)
class CapSettings:
    """``margin``: the cap step covers ``overage × (1 + margin)``. ``high_priority``: the
    PriorityClass value at or above which a node's GPUs are high priority.
    ``second_threshold``: the overage, as a fraction of the domain's cap, past which
    high-priority GPUs are capped too (at or below it they are left alone; POLCA's second
    threshold). ``floor``: the lowest limit, as a fraction of the GPU's default, for pods
    whose profile sets none. ``restore_step``: how far one step raises a limit, as a
    fraction of the default. ``guard``: a domain holding limits whose draw comes within
    this fraction of its cap is capped further before it breaches, down to ``cap × (1 −
    2 × guard)``, low-priority GPUs only (0: only breaches lower limits)."""

    enabled: bool = True
    margin: float = 0.10
    high_priority: int = 1000
    second_threshold: float = 0.05
    floor: float = 0.5
    restore_step: float = 0.10
    guard: float = 0.03

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"margin must be ≥ 0, got {self.margin}")
        if not (math.isfinite(self.second_threshold) and self.second_threshold >= 0):
            raise ValueError(f"second_threshold must be ≥ 0, got {self.second_threshold}")
        if not 0 < self.floor <= 1:
            raise ValueError(f"floor must be in (0, 1], got {self.floor}")
        if not 0 < self.restore_step <= 1:
            raise ValueError(f"restore_step must be in (0, 1], got {self.restore_step}")
        if not (math.isfinite(self.guard) and 0 <= self.guard < 0.5):
            raise ValueError(f"guard must be in [0, 0.5), got {self.guard}")


@dataclass(frozen=True)
class NodeGpus:
    """One node's GPUs, all alike, as the controller sees them now (watts per GPU).

    ``gpus`` counts the GPUs that hold pods: the limit is asked of every GPU of the node,
    but an idle GPU draws below any floor, so only these free watts. ``limit_w`` is the
    limit in force (the enforced one, else the default), ``min_w`` the lowest the GPU
    accepts, ``draw_w`` what one busy GPU draws now (NaN when unknown).
    ``priority`` is the highest PriorityClass value of the node's pods (``None``: no pod),
    ``floor`` the highest floor fraction among them (``None``: the settings' default).
    ``can_set`` is the agent's ``canSetLimits`` (``None``: no agent has reported).
    """

    node: str
    gpus: int
    limit_w: float
    default_w: float
    min_w: float = 0.0
    draw_w: float = math.nan
    priority: int | None = None
    floor: float | None = None
    can_set: bool | None = True
    curve: ThroughputCurve = DEFAULT_CURVE

    def __post_init__(self) -> None:
        if self.gpus < 0:
            raise ValueError(f"{self.node}: gpus must be ≥ 0")
        if not (math.isfinite(self.default_w) and self.default_w > 0):
            raise ValueError(f"{self.node}: default_w must be a positive number of watts")
        if not (math.isfinite(self.limit_w) and self.limit_w > 0):
            raise ValueError(f"{self.node}: limit_w must be a positive number of watts")

    @property
    def capped(self) -> bool:
        """Whether the limit in force is below the default."""
        return self.limit_w < self.default_w - 1e-6

    def lowest(self, settings: CapSettings) -> float:
        """The lowest limit this node's GPUs may get: the floor, the curve's floor and
        the GPU's minimum, whichever is highest."""
        floor = settings.floor if self.floor is None else self.floor
        return max(floor, self.curve.floor) * self.default_w


@dataclass(frozen=True)
class LimitChange:
    """Set every GPU of ``node`` from ``from_w`` to ``to_w`` (``to_w == default_w``:
    withdraw the request)."""

    node: str
    gpus: int
    from_w: float
    to_w: float
    default_w: float

    @property
    def fraction(self) -> float:
        return self.to_w / self.default_w

    @property
    def withdraw(self) -> bool:
        return self.to_w >= self.default_w - 1e-6


@dataclass(frozen=True)
class CapPlan:
    """The cap step: ``changes``, the watts they take off the limits in force at the
    draw now (``freed_w``), what they leave of the target uncovered (``uncovered_w``),
    the priority-weighted relative throughput lost (``lost``, in GPUs), whether
    high-priority GPUs are capped (``used_high``) and, when nothing can be capped or
    not enough, ``why``."""

    changes: tuple[LimitChange, ...]
    freed_w: float
    uncovered_w: float
    lost: float = 0.0
    used_high: bool = False
    why: str = ""


def unavailable(nodes: Sequence[NodeGpus]) -> str:
    """Why some nodes' GPUs cannot be capped (no agent, no permission), or ''."""
    missing = sorted(n.node for n in nodes if n.gpus > 0 and n.can_set is None)
    refused = sorted(n.node for n in nodes if n.gpus > 0 and n.can_set is False)
    parts = []
    if missing:
        parts.append(f"no powercap agent reports on {_names(missing)}")
    if refused:
        parts.append(f"the agent cannot set limits on {_names(refused)}")
    return "; ".join(parts)


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def plan_cap(
    nodes: Sequence[NodeGpus],
    overage_w: float,
    *,
    cap_w: float,
    settings: CapSettings,
    high_allowed: bool = True,
) -> CapPlan:
    """The cap step for a domain ``overage_w`` watts over its cap ``cap_w``.

    The target is ``overage × (1 + margin)``. Only nodes whose agent can set limits
    count. A limit frees what a GPU draws above it, so each node's room starts from
    ``min(limit, draw)`` (the limit where the draw is unknown). Low-priority nodes are
    capped first; high-priority ones only when the overage is past ``second_threshold
    × cap`` (and ``high_allowed``: a step taken before a breach leaves them alone) and
    then only for what the low-priority ones cannot cover
    (:func:`placement.throughput.plan_limits`). No limit goes below its floor.
    """
    why = unavailable(nodes)
    usable = [n for n in nodes if n.gpus > 0 and n.can_set]
    target = max(overage_w, 0.0) * (1.0 + settings.margin)
    if not usable or target <= 0:
        return CapPlan((), 0.0, target, why=why or ("no GPU to cap" if target > 0 else ""))
    allow_high = high_allowed and overage_w > settings.second_threshold * cap_w
    high = np.array(
        [n.priority is not None and n.priority >= settings.high_priority for n in usable]
    )
    ranks = {p: r for r, p in enumerate(sorted({n.priority or 0 for n in usable}))}
    start, lowest, default, weight = [], [], [], []
    for n, is_high in zip(usable, high, strict=True):
        top = n.limit_w if not math.isfinite(n.draw_w) else min(n.limit_w, max(n.draw_w, 0.0))
        low = max(n.lowest(settings), n.min_w)
        if (is_high and not allow_high) or low >= top:
            # No room (left alone below the second threshold, or at its floor already):
            # held where the curve is defined.
            top = low = max(top, n.curve.floor * n.default_w)
        start.append(n.gpus * top)
        lowest.append(n.gpus * low)
        default.append(n.gpus * n.default_w)
        busy = 0.0 if n.priority is None else 1.0
        weight.append(n.gpus * busy * (1.0 + ranks[n.priority or 0]))
    gpus = GpuSet(
        current=np.array(start),
        default=np.array(default),
        floor=np.array(lowest),
        weight=np.array(weight),
        high=high,
        curves=tuple(n.curve for n in usable),
    )
    plan = plan_limits(gpus, target)
    changes = []
    for i, n in enumerate(usable):
        cut = float(gpus.current[i] - plan.limits[i]) / n.gpus
        if cut * n.gpus < 1e-6:
            continue
        new = max(float(plan.limits[i]) / n.gpus, n.min_w)
        changes.append(LimitChange(n.node, n.gpus, n.limit_w, min(new, n.limit_w), n.default_w))
    reasons = [why] if why else []
    if plan.uncovered > 1e-6:
        if not allow_high and bool(high.any()):
            reasons.append(
                f"high-priority GPUs are left alone at {overage_w:.0f} W over "
                f"(second threshold {settings.second_threshold * cap_w:.0f} W)"
            )
        reasons.append(f"the floors leave {plan.uncovered:.0f} W uncovered")
    return CapPlan(
        tuple(changes),
        freed_w=plan.freed,
        uncovered_w=plan.uncovered,
        lost=plan.lost,
        used_high=plan.used_high and allow_high,
        why="; ".join(reasons),
    )


def plan_uncap(
    nodes: Sequence[NodeGpus], headroom_w: float, settings: CapSettings
) -> tuple[LimitChange, ...]:
    """One raising step, taken only with headroom (``headroom_w > 0``): every capped
    node's limit up by at most ``restore_step`` of its default, high priority first (then
    the lowest limit, then by name).

    A node whose GPUs draw at their limit (within ``BINDING`` of the default, or draw
    unknown) may draw all of the raise at once, so those raises must fit in
    ``headroom_w`` together. A node drawing below its limit wants no more than it draws:
    raising its limit adds nothing now, and it takes its whole step (a later surge is the
    cap rung's again). A node whose agent cannot set limits is raised at once: its limit
    is not in force anyway."""
    changes: list[LimitChange] = []
    if not headroom_w > 0:
        return ()
    left = headroom_w
    order = sorted(
        (n for n in nodes if n.capped and n.gpus > 0),
        key=lambda n: (-(n.priority if n.priority is not None else -(2**31)), n.limit_w, n.node),
    )
    for n in order:
        if not n.can_set:
            changes.append(LimitChange(n.node, n.gpus, n.limit_w, n.default_w, n.default_w))
            continue
        room = min(settings.restore_step * n.default_w, n.default_w - n.limit_w)
        binding = not math.isfinite(n.draw_w) or n.draw_w >= n.limit_w - BINDING * n.default_w
        per_gpu = min(room, max(left, 0.0) / n.gpus) if binding else room
        if per_gpu * n.gpus < MIN_STEP_W and per_gpu < room:
            continue
        to = n.default_w if n.default_w - (n.limit_w + per_gpu) < 1.0 else n.limit_w + per_gpu
        changes.append(LimitChange(n.node, n.gpus, n.limit_w, to, n.default_w))
        if binding:
            left -= (to - n.limit_w) * n.gpus
    return tuple(changes)
