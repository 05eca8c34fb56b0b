"""The action ladder for one domain: what the controller does next, cheapest rung first.

:func:`next_action` is a pure decision over what the controller knows about one domain at
one tick (:class:`DomainStatus`, the :class:`ScaledService` entries with replicas there,
the :class:`Step` history) and returns one :class:`Action`: :class:`Wait`,
:class:`Reshape`, :class:`Evict`, :class:`Restore` or :class:`Idle`. It takes one step per
call; the controller applies it, records a :class:`Step` and calls again on later ticks.
With GPUs to cap (:mod:`placement.control.capping`) the first rung is :class:`Cap`, and
limits come back through :class:`Uncap`; reshape and evict take only what capping
cannot cover.
:func:`reshape_plan` and :func:`restore_plan` size the ScaledObject changes
(:class:`ScaleChange`); :func:`rate_budget` and :func:`eviction_budget` apply the
sliding-window :class:`RateLimit`; :class:`LadderSettings` holds the settle periods and
thresholds.

The rules in order, and the choices behind them: docs/controller.md, the section on
``placement/control/ladder.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from placement.control.breach import BreachState, TickEvents
from placement.control.capping import (
    MIN_STEP_W,
    CapPlan,
    CapSettings,
    LimitChange,
    NodeGpus,
    plan_cap,
    plan_uncap,
)

StepKind = Literal["cap", "uncap", "reshape", "evict", "restore"]

# The hold after a cap doubles for each earlier cap episode within this many holds…
HOLD_WINDOW = 24
# …at most this many times.
MAX_HOLD_DOUBLINGS = 4


@dataclass(frozen=True)
class LadderSettings:
    """``protect_priority``: services at or above it are never reshaped (nor evicted).

    Settle periods are how long a step gets to show its effect before the next one: a
    lowered ``maxReplicaCount`` removes replicas only after the HPA's scale-down
    stabilisation window (300 s by default); an eviction frees power within the pods'
    termination grace period; a restore lets replicas scale up and be measured.

    ``limit_hold_s``: how long power limits stay where they are after the last cap step
    of the domain before the first raising step. A breach's demand comes back in its
    slot and the next slots (the profiles' peaks last hours); limits raised as soon as the
    draw falls are lowered again at the next rise, each time after the grace period over
    the cap. A held limit costs throughput only while demand is above it. The hold
    doubles for every earlier cap episode of the domain that began within
    :data:`HOLD_WINDOW` holds before this one, up to ``2**MAX_HOLD_DOUBLINGS`` holds and
    never past ``limit_hold_max_s``: a domain whose limits keep coming back too soon
    keeps them longer (as flap damping does), but not for days on end.

    ``escalate_after_s``: how long after a breach began reshape and eviction may follow
    (the power-limit rung acts at once): with power limits the breach is entered after
    their own, shorter grace, and the rungs that cost replicas still wait for the
    controller's grace.
    """

    protect_priority: int
    reshape_settle_s: float = 300.0
    evict_settle_s: float = 60.0
    restore_settle_s: float = 300.0
    reshape_rounds: int = 1
    restore_margin: float = 0.10
    cap_settle_s: float = 30.0
    uncap_settle_s: float = 120.0
    limit_hold_s: float = 0.0
    limit_hold_max_s: float = math.inf
    escalate_after_s: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "reshape_settle_s",
            "evict_settle_s",
            "restore_settle_s",
            "cap_settle_s",
            "uncap_settle_s",
            "limit_hold_s",
            "escalate_after_s",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be ≥ 0, got {value}")
        if not self.limit_hold_max_s >= self.limit_hold_s:
            raise ValueError(
                f"limit_hold_max_s must be ≥ limit_hold_s ({self.limit_hold_s:g}), "
                f"got {self.limit_hold_max_s}"
            )
        if self.reshape_rounds < 0:
            raise ValueError(f"reshape_rounds must be ≥ 0, got {self.reshape_rounds}")
        if not 0 <= self.restore_margin < 1:
            raise ValueError(f"restore_margin must be in [0, 1), got {self.restore_margin}")

    def settle_s(self, kind: StepKind) -> float:
        return {
            "cap": self.cap_settle_s,
            "uncap": self.uncap_settle_s,
            "reshape": self.reshape_settle_s,
            "evict": self.evict_settle_s,
            "restore": self.restore_settle_s,
        }[kind]


@dataclass(frozen=True)
class ScaledService:
    """One service with replicas in the domain, as its KEDA ScaledObject stands now.

    ``replicas`` run cluster-wide, ``in_domain`` of them in this domain, each drawing
    ``watts_per_replica`` now (measured, else the profile's current slot).
    ``original_max`` is the annotation written by the first reshape (``None``: never
    lowered). ``held_elsewhere``: another domain still in breach lowered it too.
    """

    name: str
    priority: int
    replicas: int
    in_domain: int
    watts_per_replica: float
    max_replicas: int
    min_replicas: int = 1
    original_max: int | None = None
    held_elsewhere: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.watts_per_replica) and self.watts_per_replica >= 0):
            raise ValueError(f"{self.name}: watts_per_replica must be finite and ≥ 0")
        if min(self.replicas, self.in_domain, self.max_replicas, self.min_replicas) < 0:
            raise ValueError(f"{self.name}: replica counts must be ≥ 0")

    @property
    def floor(self) -> int:
        """The lowest ``maxReplicaCount`` allowed: the minimum, and at least one (an HPA
        needs ``maxReplicas ≥ 1``)."""
        return max(self.min_replicas, 1)

    @property
    def lowered(self) -> bool:
        return self.original_max is not None and self.max_replicas < self.original_max


@dataclass(frozen=True)
class DomainStatus:
    """What the breach tracker says about one domain at this tick."""

    in_breach: bool
    stale: bool
    breach_since: float  # NaN when not in breach
    to_clear_w: float  # watts to shed for the breach to clear (NaN when stale)
    measured_w: float
    cap_w: float

    @staticmethod
    def of(
        state: BreachState,
        events: TickEvents,
        measured: NDArray[np.float64],
        *,
        caps: NDArray[np.float64],
        domain: int,
    ) -> DomainStatus:
        """Domain ``domain``'s row of a :func:`placement.control.breach.step` result."""
        return DomainStatus(
            in_breach=bool(state.in_breach[domain]),
            stale=bool(events.stale[domain]),
            breach_since=float(state.breach_since[domain]),
            to_clear_w=float(events.to_clear_w[domain]),
            measured_w=float(measured[domain]),
            cap_w=float(caps[domain]),
        )


@dataclass(frozen=True)
class Step:
    """A step the controller took in this domain, and when."""

    kind: StepKind
    at: float


@dataclass(frozen=True)
class ScaleChange:
    """Set ``maxReplicaCount`` of ``service`` from ``from_max`` to ``to_max``; keep
    ``original_max`` in the annotation (remove it once ``to_max == original_max``)."""

    service: str
    from_max: int
    to_max: int
    original_max: int


@dataclass(frozen=True)
class Idle:
    """Nothing to do."""


@dataclass(frozen=True)
class Wait:
    """Do nothing now; ``until`` is when the decision may change by itself (``None``:
    when the inputs change)."""

    reason: str
    until: float | None = None


@dataclass(frozen=True)
class Reshape:
    """``note``: why power limits do not cover the overage ('' when capping is off)."""

    changes: tuple[ScaleChange, ...]
    expected_w: float  # watts the lowered replicas draw now, if they leave this domain
    note: str = ""


@dataclass(frozen=True)
class Evict:
    """Hand over to :func:`placement.control.victims.choose_victims` with these arguments and
    ``priority_threshold=settings.protect_priority``; ``note`` as for :class:`Reshape`."""

    overage_w: float
    max_victims: int
    note: str = ""


@dataclass(frozen=True)
class Restore:
    changes: tuple[ScaleChange, ...]


@dataclass(frozen=True)
class Cap:
    """Lower power limits: the step of :func:`placement.control.capping.plan_cap`.
    ``guard``: taken at the guard line, out of breach (:func:`guard_line_w`)."""

    plan: CapPlan
    guard: bool = False


@dataclass(frozen=True)
class Uncap:
    """Raise power limits one step (:func:`placement.control.capping.plan_uncap`)."""

    changes: tuple[LimitChange, ...]


Action = Idle | Wait | Cap | Uncap | Reshape | Evict | Restore


def next_action(
    status: DomainStatus,
    services: Sequence[ScaledService],
    history: Sequence[Step],
    *,
    now: float,
    settings: LadderSettings,
    evictions_allowed: int,
    gpus: Sequence[NodeGpus] = (),
    capping: CapSettings | None = None,
) -> Action:
    """The next rung for one domain; see the module docstring for the order.

    ``history`` is the steps taken in this domain (any order; older ones are ignored
    where they do not matter), ``evictions_allowed`` the rate budget left now. ``gpus``
    are the domain's nodes with GPUs (for a domain out of breach: those it capped and no
    other breached domain holds); ``capping`` ``None`` turns the power-limit rung off.
    """
    if status.stale:
        return Wait("no power data for this domain")
    if status.in_breach:
        return _in_breach(
            status, services, history, now, settings, evictions_allowed, gpus, capping
        )
    last = max(history, key=lambda s: s.at, default=None)
    capped = capping is not None and any(n.capped for n in gpus)
    if not capped and not any(s.lowered for s in services):
        return Idle()
    if capped:
        assert capping is not None
        guarded = _guard(status, last, now, settings, gpus, capping)
        if guarded is not None:
            return guarded
    if last is not None:
        until = last.at + max(settings.settle_s(last.kind), settings.restore_settle_s)
        if capped:
            until = last.at + max(settings.settle_s(last.kind), settings.uncap_settle_s)
            held_until, hold = limits_held_until(
                history, settings.limit_hold_s, max_s=settings.limit_hold_max_s
            )
            if now < held_until:
                return Wait(f"holding power limits {hold:g} s after the last cap", held_until)
        if now < until:
            return Wait(f"letting {last.kind} settle before restoring", until)
    headroom = status.cap_w * (1.0 - settings.restore_margin) - status.measured_w
    if capped:
        # Limits first: with limits in force the measured draw understates demand, so
        # they are raised (and measured) before replicas come back.
        assert capping is not None
        raised = plan_uncap(gpus, headroom, capping)
        if raised:
            return Uncap(raised)
        return Wait("waiting for headroom to raise power limits")
    changes = restore_plan(services, headroom)
    if not changes:
        return Wait("waiting for headroom to restore")
    return Restore(changes)


def guard_line_w(status: DomainStatus, capping: CapSettings) -> float:
    """The draw above which a domain holding limits is capped further before it
    breaches (``inf`` with the guard off)."""
    if capping.guard <= 0:
        return math.inf
    return status.cap_w * (1.0 - capping.guard)


def _guard(
    status: DomainStatus,
    last: Step | None,
    now: float,
    settings: LadderSettings,
    gpus: Sequence[NodeGpus],
    capping: CapSettings,
) -> Action | None:
    """A cap step for a domain out of breach whose limits no longer keep its draw clear of
    the cap (``None``: nothing to do here). Demand that rose into a breach keeps rising
    under held limits (the profiles' peaks last hours); each breach costs the grace
    period and the time until the step shows over the cap, a step taken at the guard
    line costs neither. Only low-priority GPUs, and only while the domain holds limits:
    a domain never capped is left to its breaches."""
    line = guard_line_w(status, capping)
    if not status.measured_w > line:
        return None
    if last is not None:
        until = last.at + settings.settle_s(last.kind)
        if now < until:
            return Wait(f"letting {last.kind} settle before guarding the cap", until)
    shed = status.measured_w - status.cap_w * (1.0 - 2.0 * capping.guard)
    plan = plan_cap(gpus, shed, cap_w=status.cap_w, settings=capping, high_allowed=False)
    if plan.changes and plan.freed_w >= MIN_STEP_W:
        return Cap(plan, guard=True)
    return None


def limits_held_until(
    history: Sequence[Step], base_s: float, *, max_s: float = math.inf
) -> tuple[float, float]:
    """``(until, hold)``: limits stay until ``hold`` after the last cap step in
    ``history`` (``-inf`` without one). ``hold`` is ``base_s`` doubled once for every
    earlier cap episode that began within ``HOLD_WINDOW × base_s`` before the last one (at
    most ``MAX_HOLD_DOUBLINGS`` times), and at most ``max_s``. An episode is a run of cap
    steps with no other step between them."""
    starts: list[float] = []
    last_cap = -math.inf
    previous: StepKind | None = None
    for step in sorted(history, key=lambda s: s.at):
        if step.kind == "cap":
            last_cap = step.at
            if previous != "cap":
                starts.append(step.at)
        previous = step.kind
    if not starts or base_s <= 0:
        return last_cap + base_s, base_s
    earlier = sum(1 for t in starts[:-1] if starts[-1] - t <= HOLD_WINDOW * base_s)
    hold = min(float(base_s * 2 ** min(earlier, MAX_HOLD_DOUBLINGS)), max(max_s, base_s))
    return last_cap + hold, hold


def _in_breach(
    status: DomainStatus,
    services: Sequence[ScaledService],
    history: Sequence[Step],
    now: float,
    settings: LadderSettings,
    evictions_allowed: int,
    gpus: Sequence[NodeGpus],
    capping: CapSettings | None,
) -> Action:
    this_breach = [s for s in history if s.at >= status.breach_since]
    if this_breach:
        latest = max(this_breach, key=lambda s: s.at)
        until = latest.at + settings.settle_s(latest.kind)
        if now < until:
            return Wait(f"waiting for the effect of {latest.kind}", until)
    note = ""
    if capping is not None:
        plan = plan_cap(gpus, status.to_clear_w, cap_w=status.cap_w, settings=capping)
        if plan.changes and plan.freed_w >= MIN_STEP_W:
            return Cap(plan)
        note = plan.why or "power limits are at their floors"
        escalate = status.breach_since + settings.escalate_after_s
        if now < escalate:
            return Wait(
                f"power limits cover no more; reshaping or evicting from {escalate:g}", escalate
            )
    reshapes = sum(1 for s in this_breach if s.kind == "reshape")
    if reshapes < settings.reshape_rounds:
        changes, expected = reshape_plan(services, status.to_clear_w, settings)
        if changes:
            return Reshape(changes, expected, note)
    if evictions_allowed <= 0:
        return Wait("eviction rate limit reached")
    return Evict(status.to_clear_w, evictions_allowed, note)


def reshape_plan(
    services: Sequence[ScaledService], shed_w: float, settings: LadderSettings
) -> tuple[tuple[ScaleChange, ...], float]:
    """Lower the lowest-priority services (then the largest draw, then by name) until
    ``shed_w`` watts are covered at their current draw; returns the changes and the
    watts they take away. Lowering ``maxReplicaCount`` below the replicas running is
    what removes replicas, so the new maximum counts down from ``min(max, replicas)``;
    only replicas in this domain count towards ``shed_w``."""
    changes: list[ScaleChange] = []
    remaining = shed_w
    order = sorted(services, key=lambda s: (s.priority, -s.watts_per_replica, s.name))
    for s in order:
        if remaining <= 0:
            break
        if s.priority >= settings.protect_priority or s.watts_per_replica <= 0:
            continue
        top = min(s.max_replicas, s.replicas)
        room = min(s.in_domain, top - s.floor)
        if room <= 0:
            continue
        # At least one: ``remaining`` is positive even when the quotient underflows.
        k = min(room, max(1, math.ceil(remaining / s.watts_per_replica)))
        original = s.original_max if s.original_max is not None else s.max_replicas
        changes.append(ScaleChange(s.name, s.max_replicas, top - k, original))
        remaining -= k * s.watts_per_replica
    return tuple(changes), shed_w - remaining if changes else 0.0


def restore_plan(services: Sequence[ScaledService], headroom_w: float) -> tuple[ScaleChange, ...]:
    """Raise lowered services back towards their original maximum, most important first
    (then by name), as many replicas as ``headroom_w`` holds at their current draw.
    A service drawing nothing is restored at once; one held by another breach is not."""
    changes: list[ScaleChange] = []
    left = headroom_w
    for s in sorted(services, key=lambda s: (-s.priority, s.name)):
        if not s.lowered or s.held_elsewhere or s.original_max is None:
            continue
        missing = s.original_max - s.max_replicas
        if s.watts_per_replica <= 0:
            k = missing
        else:
            k = min(missing, math.floor(max(left, 0.0) / s.watts_per_replica))
        if k <= 0:
            continue
        changes.append(ScaleChange(s.name, s.max_replicas, s.max_replicas + k, s.original_max))
        left -= k * s.watts_per_replica
    return tuple(changes)


# ------------------------------------------------------------------------ rate limits


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` evictions in any ``window_s`` seconds."""

    limit: int
    window_s: float


def rate_budget(times: Sequence[float], now: float, rate: RateLimit) -> int:
    """Evictions still allowed at ``now`` given the times of past ones (sliding window)."""
    recent = sum(1 for t in times if now - rate.window_s < t <= now)
    return max(0, rate.limit - recent)


def eviction_budget(
    domain_times: Sequence[float],
    cluster_times: Sequence[float],
    now: float,
    *,
    per_domain: RateLimit,
    cluster: RateLimit,
) -> int:
    """The smaller of the domain's and the cluster's remaining eviction budgets."""
    return min(rate_budget(domain_times, now, per_domain), rate_budget(cluster_times, now, cluster))
