"""The background planner: a global plan the extender's prioritize steers toward.

The plan is recomputed (CP-SAT by default) when nodes, services or caps change —
debounced, so a burst of node events costs one solve — and every ``interval`` to
follow drift. Binds and pod churn do not trigger a re-plan: the plan is a target,
binds move toward it. Prioritize reads :meth:`Planner.targets`: replicas of a
service the plan wants per domain.

The planning problem is the live cluster: known nodes, the config's services with a
profile and ``replicas > 0``, the current placement (so CP-SAT keeps moves few), and
caps reduced by the load of pods the plan does not cover (other services, nameplate
fallbacks), which it must leave room for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from extender.cluster.state import ClusterState
from extender.config.model import Config, PlannerSettings, ServiceEntry
from placement.assignment import Assignment
from placement.fleet import Fleet
from placement.problem import Problem
from placement.services import Services
from placement.strategies import run_strategy

log = logging.getLogger(__name__)

# A cap the plan may not use at all stays a positive number: scores divide by caps.
_MIN_CAP_W = 1.0


@dataclass(frozen=True)
class PlanSnapshot:
    """One published plan. ``targets[service]`` is replicas per domain (leaf entries
    hold the plan; inner domains the sums below them)."""

    created: float  # time.monotonic()
    strategy: str
    status: str
    gap: float | None
    hosted: int
    demand: int
    wall_s: float
    topology_version: int
    targets: dict[str, NDArray[np.int64]]


def planning_problem(
    state: ClusterState, config: Config, demand: Mapping[str, int] | None = None
) -> Problem | None:
    """The live cluster as a :class:`Problem` (see the module doc), or ``None`` when
    there is nothing to plan. ``demand`` (replicas per service, read from the workloads)
    replaces the config's ``services[].replicas`` when given. Takes the state lock while it
    copies."""

    def replicas(e: ServiceEntry) -> int:
        return e.replicas if demand is None else demand.get(e.name, 0)

    planned = [e for e in config.services.values() if e.profile is not None and replicas(e) > 0]
    # A pod counts as a replica of a planned service when it was admitted at that
    # service's profile; otherwise (a fallback, another profile) it is background load.
    planned_keys = [{f"service:{e.name}", f"profile:{e.profile_name}"} for e in planned]
    with state.lock:
        nodes = state.nodes()
        if not nodes or not planned:
            return None
        tree = state.tree
        names = tuple(n.name for n in nodes)
        node_pos = {n: i for i, n in enumerate(names)}
        svc_pos = {e.name: i for i, e in enumerate(planned)}
        current = np.zeros((len(planned), len(nodes)), dtype=np.int64)
        background = np.zeros_like(state.ledger.load)
        for pod in state.pods.values():
            n = node_pos.get(pod.node)
            if n is None:
                continue  # not counted in the ledger either
            s = svc_pos.get(pod.service) if pod.service is not None else None
            if s is not None and pod.profile_key in planned_keys[s]:
                current[s, n] += 1
            else:
                background[tree.membership[:, nodes[n].leaf]] += pod.profile
        version = state.topology_version
    fleet = Fleet(
        names=names,
        domain=np.array([n.leaf for n in nodes], dtype=np.int64),
        gpus=np.array([n.gpus for n in nodes], dtype=np.int64),
        idle_watts=np.array([n.idle_watts for n in nodes], dtype=np.float64),
    )
    services = Services(
        names=tuple(e.name for e in planned),
        demand=np.array(
            [max(replicas(e), int(current[i].sum())) for i, e in enumerate(planned)],
            dtype=np.int64,
        ),
        gpus=np.array([e.gpus_per_replica for e in planned], dtype=np.int64),
        priority=np.array([e.priority for e in planned], dtype=np.int64),
        nameplate=np.array([config.nameplate_of(e.name) for e in planned], dtype=np.float64),
        profiles=np.array([e.profile for e in planned], dtype=np.float64),
    )
    # idle + planned ≤ cap·(1−h) − background  ⇔  raw cap' = cap − background/(1−h)
    caps = np.maximum(tree.caps - background / (1.0 - config.headroom), _MIN_CAP_W)
    problem = Problem(
        name=f"{config.name}@{version}",
        grid=config.grid,
        tree=tree.with_caps(caps),
        fleet=fleet,
        services=services,
        headroom=config.headroom,
        current=current,
    )
    return problem


def domain_targets(problem: Problem, assignment: Assignment) -> dict[str, NDArray[np.int64]]:
    """Replicas per service per domain (every level) of a placement."""
    by_domain = assignment.by_domain(problem)
    out: dict[str, NDArray[np.int64]] = {}
    for s, name in enumerate(problem.services.names):
        row = by_domain[s].copy()
        row.setflags(write=False)
        out[name] = row
    return out


class Planner:
    """Keeps :attr:`latest` fresh in a background thread (:meth:`start`), or on demand
    (:meth:`plan_now`)."""

    def __init__(self, state: ClusterState, config: Config, settings: PlannerSettings) -> None:
        self.state = state
        self.config = config
        self.settings = settings
        self.latest: PlanSnapshot | None = None
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._strategy = settings.strategy
        # Replicas per service from the workloads (set_demand); None: the config's.
        self.demand: Mapping[str, int] | None = None
        # True while the demand is to come from the workloads (set_demand): the background
        # loop does not plan before the first one, which would be a plan for no replicas.
        self.wait_for_demand = False

    def targets(self, service: str) -> NDArray[np.int64] | None:
        plan = self.latest
        return None if plan is None else plan.targets.get(service)

    def all_targets(self) -> tuple[object, dict[str, NDArray[np.int64]]] | None:
        plan = self.latest
        return None if plan is None else (plan, plan.targets)

    def info(self) -> tuple[float, float | None, int] | None:
        """``(created, gap, hosted)`` of the latest plan, for metrics."""
        plan = self.latest
        return None if plan is None else (plan.created, plan.gap, plan.hosted)

    def plan_now(self) -> PlanSnapshot | None:
        """Plan the current cluster and publish the plan; returns it (``None`` when
        there is nothing to plan). Solver errors are logged and leave the old plan."""
        problem = planning_problem(self.state, self.config, self.demand)
        version = self.state.topology_version
        if problem is None:
            return None
        options: dict[str, object] = {}
        if self._strategy == "cpsat":
            options = {
                "time_limit_s": self.settings.time_limit_s,
                "workers": self.settings.workers,
            }
        try:
            plan = run_strategy(self._strategy, problem, **options)
        except ImportError as exc:
            # The solver's module is missing from this build: greedy keeps prioritize
            # steering (it is the same online rule), loudly.
            log.error("planner strategy %s unavailable (%s); using greedy", self._strategy, exc)
            self._strategy = "greedy"
            plan = run_strategy("greedy", problem)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("planning failed; keeping the previous plan")
            return None
        snapshot = PlanSnapshot(
            created=time.monotonic(),
            strategy=plan.strategy,
            status=plan.stats.status,
            gap=plan.stats.gap,
            hosted=int(plan.assignment.hosted.sum()),
            demand=int(problem.services.demand.sum()),
            wall_s=plan.stats.wall_s,
            topology_version=version,
            targets=domain_targets(problem, plan.assignment),
        )
        self.latest = snapshot
        self.last_error = None
        log.info(
            "plan %s (%s): %d/%d replicas, gap %s, %.2fs",
            snapshot.strategy,
            snapshot.status,
            snapshot.hosted,
            snapshot.demand,
            "n/a" if snapshot.gap is None else f"{snapshot.gap:.4f}",
            snapshot.wall_s,
        )
        return snapshot

    # --- background loop ---------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="powercap-planner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def set_demand(self, demand: Mapping[str, int]) -> None:
        """Plan for ``demand`` (replicas per service) from now on; a change re-plans after
        the debounce, as a change of nodes or caps does."""
        demand = dict(demand)
        if demand == self.demand:
            return
        self.demand = demand
        self.state.mark_changed()
        self.poke()

    def poke(self) -> None:
        """Ask for a re-plan check now (e.g. after a config change)."""
        self._wake.set()

    def _due(self) -> bool:
        plan = self.latest
        if plan is None:
            return True
        if plan.topology_version != self.state.topology_version:
            return True
        return time.monotonic() - plan.created >= self.settings.interval_s

    def _run(self) -> None:
        poll = max(0.05, min(1.0, self.settings.debounce_s / 4))
        while not self._stop.is_set():
            self._wake.wait(poll)
            self._wake.clear()
            if self._stop.is_set() or not self.state.synced or not self._due():
                continue
            if self.wait_for_demand and self.demand is None:
                continue
            # Debounce: wait until nodes, services and caps have been quiet for debounce_s.
            while not self._stop.is_set():
                quiet_for = time.monotonic() - self.state.topology_changed_at
                if quiet_for >= self.settings.debounce_s:
                    break
                self._stop.wait(max(poll, self.settings.debounce_s - quiet_for))
            if self._stop.is_set():
                break
            before = self.latest
            self.plan_now()
            if self.latest is before:
                # Nothing planned (empty cluster or a solver error): retry after a pause
                # rather than spin.
                self._stop.wait(max(self.settings.debounce_s, 1.0))
