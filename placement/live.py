"""What a live run on a cluster returns: the placement a real scheduler made, read back.

``powercap whatif --kwok`` hands a problem to a cluster backend (the KWOK harness in
``e2e/``, found through the ``powercap.clusters`` entry-point group) and gets a
:class:`ClusterRun` back, which the CLI judges with :func:`placement.metrics.evaluate`
exactly as it judges the offline strategies. The types live here so that the core
defines the contract and the backend depends on it, not the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from placement.assignment import Assignment
from placement.problem import Problem

SCHEDULERS = ("powercap", "default")


@dataclass(frozen=True)
class LiveSettings:
    """How to run: ``scheduler`` is ``powercap`` (kube-scheduler calling the extender) or
    ``default`` (no extender). ``default`` runs kube-scheduler's upstream default profile,
    or with ``stock_default=False`` the shipped profile minus the extender — the same
    scheduler without powercap, which is the fair baseline for throughput. The planner
    fields configure the extender's background planner (ignored for ``default``)."""

    scheduler: str = "powercap"
    stock_default: bool = True
    planner: str = "cpsat"
    reserve_plan: bool = True
    planner_time_limit_s: float = 30.0
    settle_timeout_s: float = 900.0

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(
                f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}"
            )


@dataclass(frozen=True)
class ClusterRun:
    """The outcome of scheduling a problem's pods on a cluster.

    ``pending`` maps each pod left Pending to its last FailedScheduling message.
    ``throughput_pods_per_s`` is bound pods per second between the first and the last
    binding (``None`` with fewer than two bindings). ``timings`` holds seconds per step
    (cluster start, nodes, pods, planning, scheduling) for the record."""

    scheduler: str
    assignment: Assignment
    pending: Mapping[str, str]
    throughput_pods_per_s: float | None
    schedule_s: float
    timings: Mapping[str, float] = field(default_factory=dict)
    planner: Mapping[str, float] = field(default_factory=dict)


class ClusterBackend(Protocol):
    """Runs ``problem`` on a fresh cluster per ``settings``; calls ``step(description)``
    as each long step starts, so the caller can show progress."""

    def __call__(
        self, problem: Problem, settings: LiveSettings, step: Callable[[str], None]
    ) -> ClusterRun: ...
