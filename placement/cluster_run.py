"""What a live run on a cluster returns: the placement a real scheduler made, read back.

``powercap whatif --kwok`` hands a problem to a cluster backend (the KWOK harness in
``e2e/``, found through the ``powercap.clusters`` entry-point group) and gets a
:class:`ClusterRun` back, which the CLI judges with :func:`placement.metrics.evaluate`
exactly as it judges the offline strategies. The types live here so that the core
defines the contract and the backend depends on it, not the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from placement.assignment import Assignment
from placement.grid import Grid
from placement.problem import Problem

SCHEDULERS = ("powercap", "default")


DAY_S = 86400


@dataclass(frozen=True)
class ReplaySettings:
    """Replay measured power on the placed cluster, on a compressed clock.

    ``watts`` maps a service to watts per replica above node idle in consecutive
    ``step_s`` slots from midnight of replay day 0 (the replay file's content). The window
    starts at replay day ``day``, ``start_s`` seconds after its midnight, and lasts
    ``duration_s`` simulated seconds, run ``speed`` times faster than real time. With
    ``controller`` the extender's companion controller acts during the window; its timings
    (``period_s``, ``grace_s``, the ``settle_*_s``) are in simulated seconds and are
    divided by ``speed`` for the extender (to the millisecond; the period and the
    Prometheus scrape interval to at least 0.1 s), as is ``hold_s``, how long a breach's
    overage stays in the extender's ledger (``controller.feedback.hold``)."""

    watts: Mapping[str, Sequence[float]]
    step_s: int = 600
    day: int = 0
    start_s: int = 0
    duration_s: int = 4 * 3600
    speed: float = 60.0
    controller: bool = True
    # The shipped controller defaults, but a 30 s period (15 s at speed 300 would ask for
    # a tick every 50 ms of wall time).
    period_s: float = 30.0
    grace_s: float = 60.0
    settle_reshape_s: float = 300.0
    settle_evict_s: float = 60.0
    settle_restore_s: float = 300.0
    hold_s: float = float(DAY_S)
    # The shipped power-limit step timings (``controller.powerLimits.settle``): how long a
    # cap step gets to show in the measurements, how long limits stay before raising and
    # how long they are held after the last cap.
    settle_cap_s: float = 30.0
    settle_uncap_s: float = 120.0
    limit_hold_s: float = float(DAY_S)
    limit_max_hold_s: float = float(DAY_S)
    limit_grace_s: float = 15.0
    # A simulated powercap agent on every fake node: GPUs hold to their power limits (the
    # default one until the controller asks less) and the controller may cap them.
    power_limits: bool = False

    def __post_init__(self) -> None:
        if self.step_s <= 0:
            raise ValueError(f"replay step_s must be > 0, got {self.step_s}")
        if not self.watts:
            raise ValueError("replay: no service series")
        if self.day < 0 or self.day >= self.days:
            raise ValueError(f"replay day must be in 0..{self.days - 1}, got {self.day}")
        if not 0 <= self.start_s < DAY_S:
            raise ValueError(f"replay start must be within the day, got {self.start_s} s")
        if self.duration_s <= 0:
            raise ValueError(f"replay duration must be > 0, got {self.duration_s} s")
        if self.speed <= 0:
            raise ValueError(f"replay speed must be > 0, got {self.speed}")

    @property
    def days(self) -> int:
        """Whole days the shortest series covers (at least 1: a shorter one repeats)."""
        shortest = min(len(v) for v in self.watts.values())
        return max(1, shortest * self.step_s // DAY_S)

    @property
    def sim_start_s(self) -> float:
        """Simulated seconds from midnight of replay day 0 to the window's start."""
        return float(self.day * DAY_S + self.start_s)


def speed_problem(grid: Grid, speed: float) -> str | None:
    """Why a replay at ``speed`` cannot run the controller on ``grid``, or ``None``: the
    controller slots wall-clock time, so its grid is compressed by the speed, and the
    compressed step must stay a whole number of seconds."""
    if speed <= 0:
        return f"must be > 0, got {speed:g}"
    if speed != int(speed) or grid.step_s % int(speed):
        divisors = [d for d in range(1, grid.step_s + 1) if grid.step_s % d == 0]
        return (
            f"must divide the grid step ({grid.step_s} s) so the controller's slots stay "
            f"whole seconds, e.g. {', '.join(map(str, divisors[-4:]))}; got {speed:g}"
        )
    return None


@dataclass(frozen=True)
class LiveSettings:
    """How to run: ``scheduler`` is ``powercap`` (kube-scheduler calling the extender) or
    ``default`` (no extender). ``default`` runs kube-scheduler's upstream default profile,
    or with ``stock_default=False`` the shipped profile minus the extender — the same
    scheduler without powercap, which is the fair baseline for throughput. The planner
    fields configure the extender's background planner (ignored for ``default``). With
    ``replay`` the placement, once settled, draws replayed power (see
    :class:`ReplaySettings`); it needs ``scheduler="powercap"`` when the controller runs.
    With ``baseline`` a controlled replay is preceded by the same window with the
    controller off, on the same cluster and placement (nothing changes a placement
    without the controller, so the second window starts from the same pods): the fair
    "without" figure, free of the run-to-run variation of placing twice. Nothing acts
    in it, so it may run at its own ``baseline_speed`` (default: the replay's): the
    speed only sets how often the ground truth is sampled. With ``without_limits`` a
    replay that caps GPUs (``replay.power_limits``) is followed by the same window once
    more, the controller on but no power limits (its ladder then reshapes and evicts):
    the contrast for the cap rung, on the same cluster (the capped window runs first, so
    a placement it leaves unchanged is the one the contrast starts from). ``resources``
    (the default) runs the extender on the powercap.io objects made from the scenario
    and reads the demand from the Deployments; off, on the config file's tree and
    replicas (the deprecated ConfigMap form)."""

    scheduler: str = "powercap"
    stock_default: bool = True
    planner: str = "cpsat"
    reserve_plan: bool = True
    filter_to_plan: bool = True
    planner_time_limit_s: float = 30.0
    settle_timeout_s: float = 900.0
    replay: ReplaySettings | None = None
    baseline: bool = False
    baseline_speed: float | None = None
    without_limits: bool = False
    resources: bool = True

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(
                f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}"
            )
        if self.replay is not None and self.replay.controller and self.scheduler != "powercap":
            raise ValueError("the controller runs in the extender: replay it with powercap")
        if self.baseline and (self.replay is None or not self.replay.controller):
            raise ValueError("a baseline precedes a replay with the controller on")
        if self.without_limits and (
            self.replay is None or not self.replay.controller or not self.replay.power_limits
        ):
            raise ValueError(
                "a window without power limits follows a controlled replay with power limits"
            )


@dataclass(frozen=True)
class ReplayOutcome:
    """What a replay window measured, from the power simulator's ground truth (not the
    controller's view, so runs with and without the controller are judged alike).

    ``breach_domain_minutes`` sums, over domains, the simulated minutes a domain's power
    was over its cap of that slot; ``domain_breach_minutes`` splits it by domain and
    ``daily_breach_minutes`` by replay day. ``actions`` counts the controller's steps by
    kind (its ``powercap_controller_actions_total``); ``evicted_by_priority`` counts the
    evicted pods by their service's priority (``evictions_by_day`` by replay day).
    ``window`` is the simulated window: replay day, start and duration in seconds, speed,
    whether the controller ran and whether GPU power limits were simulated; ``samples`` the
    ground-truth samples taken. ``throughput_lost_fraction`` is the time- and GPU-weighted
    mean fraction of the running replicas' throughput lost to GPU power limits, under
    their throughput curves (0 without power limits; docs/power-limits.md, "In the power
    simulator"). With power limits, ``actions`` always has ``cap``: the controller's own
    count when it reports one, else the NodePowerLimit writes asking a limit that the
    simulated agents saw."""

    breach_domain_minutes: float
    domain_breach_minutes: Mapping[str, float]
    daily_breach_minutes: Mapping[int, float]
    actions: Mapping[str, int]
    evicted_by_priority: Mapping[int, int]
    evictions_by_day: Mapping[int, int]
    window: Mapping[str, float]
    samples: int = 0
    throughput_lost_fraction: float = 0.0


@dataclass(frozen=True)
class ClusterRun:
    """The outcome of scheduling a problem's pods on a cluster.

    ``pending`` maps each pod left Pending to its last FailedScheduling message.
    ``throughput_pods_per_s`` is bound pods per second between the first and the last
    binding (``None`` with fewer than two bindings). ``timings`` holds seconds per step
    (cluster start, nodes, pods, planning, scheduling) for the record. ``replay`` is the
    replayed window's outcome, ``baseline`` that of the same window without the
    controller before it (:attr:`LiveSettings.baseline`), ``without_limits`` that of the
    same window after it with the controller but no power limits
    (:attr:`LiveSettings.without_limits`). ``cpu_busy`` is the share of the machine's
    CPUs busy while the pods were scheduled (``None``: not measured)."""

    scheduler: str
    assignment: Assignment
    pending: Mapping[str, str]
    throughput_pods_per_s: float | None
    schedule_s: float
    timings: Mapping[str, float] = field(default_factory=dict)
    planner: Mapping[str, float] = field(default_factory=dict)
    replay: ReplayOutcome | None = None
    baseline: ReplayOutcome | None = None
    without_limits: ReplayOutcome | None = None
    cpu_busy: float | None = None


class ClusterBackend(Protocol):
    """Runs ``problem`` on a fresh cluster per ``settings``; calls ``step(description)``
    as each long step starts, so the caller can show progress."""

    def __call__(
        self, problem: Problem, settings: LiveSettings, step: Callable[[str], None]
    ) -> ClusterRun: ...
