"""A scenario through the real kube-scheduler on a throwaway KWOK cluster, read back.

:func:`run_on_kwok` is the ``powercap.clusters`` backend ``kwok`` behind ``powercap whatif
--kwok`` (a :class:`placement.cluster_run.ClusterBackend`): it starts a cluster, creates
one fake node per scenario node and one Deployment per service (every pod exists, Pending,
before any scheduler runs), creates the scenario's PowerDomains, PowerProfiles and
PowerPolicies and starts the extender on them, its demand read from the Deployments, and
waits for its first plan (for ``powercap``), starts kube-scheduler (for ``default``: the
upstream default profile, or the shipped file without the extender when ``stock_default``
is off), waits until the pods settle, reads the placement back and returns a
:class:`~placement.cluster_run.ClusterRun`. With a replay it then calls
:func:`e2e.replay.replay_window`. :class:`BindClock` times the bindings from one pod watch,
so 10,000 pods cost one stream rather than repeated lists; :func:`throughput` and
:func:`wait_scheduled` are its helpers.

The steps and why pods exist before the scheduler starts: docs/whatif.md.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from e2e.cluster import Cluster, Process, cluster
from e2e.cputime import CpuMeter
from e2e.deploy import (
    SERVICE_LABEL,
    Observed,
    PlannerChoice,
    api_client,
    create_deployments,
    create_nodes,
    observe,
    pod_watch,
    use_resources,
    wait_for,
    write_config,
)
from e2e.extender_view import plan_gauges, verb_summary
from e2e.scheduler import ExtenderPorts, start_extender, start_scheduler
from placement.cluster_run import ClusterRun, LiveSettings, ReplayOutcome
from placement.problem import Problem

LOG_DIR = Path("out") / "e2e-logs"
# Without a new binding for this long, a run whose remaining pods all carry a
# FailedScheduling event is settled (the scheduler retries them with backoff).
QUIET_S = 10.0


class BindClock:
    """When each pod was first seen bound, from the extender's own list+watch machinery
    (:class:`extender.cluster.mirror.Reflector`: resume, ``410`` relist, back-off) in a thread.

    Use it as a context manager (the thread runs inside the ``with``; entry returns once
    the first list is in). Times are ``time.monotonic()`` of the event's arrival; pods
    already bound on entry get the entry time."""

    def __init__(self, core: Any) -> None:
        self.bound_at: dict[str, float] = {}
        self.created: set[str] = set()
        self._lock = threading.Lock()
        self._watch = pod_watch(core, "bind-clock", self._replace, on_event=self._event)

    def __enter__(self) -> BindClock:
        self._watch.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._watch.__exit__(*exc)

    @property
    def pods(self) -> int:
        """Scenario pods seen so far (created, bound or not)."""
        with self._lock:
            return len(self.created)

    @property
    def bound(self) -> int:
        with self._lock:
            return len(self.bound_at)

    def binding_times(self) -> list[float]:
        with self._lock:
            return sorted(self.bound_at.values())

    def _note(self, obj: dict[str, Any], now: float) -> None:
        meta = obj.get("metadata") or {}
        if SERVICE_LABEL not in (meta.get("labels") or {}):
            return
        uid = str(meta.get("uid", ""))
        with self._lock:
            self.created.add(uid)
            if (obj.get("spec") or {}).get("nodeName") and uid not in self.bound_at:
                self.bound_at[uid] = now

    def _replace(self, items: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        for obj in items:
            self._note(obj, now)

    def _event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind in ("ADDED", "MODIFIED"):
            self._note(obj, time.monotonic())


def throughput(times: list[float]) -> tuple[float | None, float]:
    """Bindings per second between the first and the last binding, and that window."""
    if len(times) < 2:
        return None, 0.0
    window = times[-1] - times[0]
    return ((len(times) - 1) / window if window > 0 else None), window


def wait_scheduled(
    client: Any,
    problem: Problem,
    clock: BindClock,
    *,
    timeout_s: float,
    alive: Callable[[], None],
) -> Observed:
    """Wait until every pod is bound, or no binding happened for :data:`QUIET_S` and every
    Pending pod has a FailedScheduling event; then read the placement back."""
    wanted = int(problem.services.demand.sum())
    deadline = time.monotonic() + timeout_s
    last_count, since = -1, time.monotonic()
    while True:
        alive()
        count = clock.bound
        if count != last_count:
            last_count, since = count, time.monotonic()
        if count >= wanted:
            return observe(client, problem)
        if time.monotonic() - since >= QUIET_S:
            seen = observe(client, problem)
            if all(seen.pending.values()) and seen.pods == wanted:
                return seen
            since = time.monotonic()  # some still without an event: look again later
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"scheduling did not settle in {timeout_s:.0f}s: {count}/{wanted} pods bound"
            )
        time.sleep(0.5)


class Laps:
    """Seconds spent in each phase of a run: calling ``laps(name)`` ends phase ``name`` and
    starts the next, so :attr:`timings` maps each phase to the seconds since the previous
    call (or since construction), rounded to 0.01 s."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.monotonic()

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.timings[name] = round(now - self._last, 2)
        self._last = now


@dataclass
class Schedulers:
    """The processes scheduling a run: kube-scheduler and, for ``powercap``, the extender
    with the gauges of its first plan (``planner``; empty without an extender)."""

    extender: Process | None = None
    extender_ports: ExtenderPorts | None = None
    planner: dict[str, float] = field(default_factory=dict)
    watched: list[Process] = field(default_factory=list)

    @property
    def running_extender(self) -> tuple[Process, ExtenderPorts] | None:
        """The extender and its ports, as :func:`e2e.replay.replay_window` takes them."""
        if self.extender is None or self.extender_ports is None:
            return None
        return self.extender, self.extender_ports

    def alive(self) -> None:
        """Raise :class:`RuntimeError` with the log's tail if a watched process exited."""
        for proc in self.watched:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")


def run_on_kwok(
    problem: Problem, settings: LiveSettings, step: Callable[[str], None]
) -> ClusterRun:
    """Schedule ``problem`` on a fresh KWOK cluster (see the module doc)."""
    from kubernetes import client as k8s

    laps = Laps()
    step("starting a KWOK cluster (etcd, kube-apiserver, kube-controller-manager, kwok)")
    with cluster(LOG_DIR) as c:
        client = api_client(c.kubeconfig)
        core: Any = k8s.CoreV1Api(client)
        laps("cluster_s")
        step(f"creating {problem.fleet.size:,} fake GPU nodes")
        create_nodes(client, problem, timeout_s=60.0 + 0.2 * problem.fleet.size)
        laps("nodes_s")
        # One watch counts the pods as they are created and times their bindings.
        with BindClock(core) as clock:
            create_pending_pods(client, problem, clock, step=step)
            laps("pods_s")
            choice = PlannerChoice(
                strategy=settings.planner,
                reserve_plan=settings.reserve_plan,
                filter_to_plan=settings.filter_to_plan,
                time_limit_s=settings.planner_time_limit_s,
            )
            schedulers = start_schedulers(c, problem, settings, choice=choice, step=step, laps=laps)
            meter = CpuMeter(_run_pids(c, schedulers), own="benchmark")
            meter.start()
            seen = wait_scheduled(
                client, problem, clock, timeout_s=settings.settle_timeout_s, alive=schedulers.alive
            )
            laps("schedule_s")
            cpu = meter.stop()
            step(cpu.describe(per=clock.bound))
            if schedulers.extender_ports is not None:
                step(f"extender: {verb_summary(schedulers.extender_ports.metrics)}")
            replayed, baseline, without_limits = replay_outcomes(
                c,
                core,
                problem,
                settings=settings,
                choice=choice,
                extender=schedulers.running_extender,
                step=step,
                laps=laps,
            )

    rate, window = throughput(clock.binding_times())
    return ClusterRun(
        scheduler=settings.scheduler,
        assignment=seen.assignment,
        pending=dict(seen.pending),
        throughput_pods_per_s=rate,
        schedule_s=round(window, 3),
        timings=laps.timings,
        planner=schedulers.planner,
        replay=replayed,
        baseline=baseline,
        without_limits=without_limits,
        cpu_busy=round(cpu.busy, 3),
    )


def _run_pids(c: Cluster, schedulers: Schedulers) -> dict[str, int]:
    """The processes a scheduling run's CPU is spent in, by name."""
    pids = {p.name: p.popen.pid for p in schedulers.watched}
    for component in ("kube-apiserver", "etcd", "kwok-controller", "kube-controller-manager"):
        pid = c.component_pid(component)
        if pid is not None:
            pids[component] = pid
    return pids


def create_pending_pods(
    client: Any, problem: Problem, clock: BindClock, *, step: Callable[[str], None]
) -> None:
    """Create one Deployment per service and wait until ``clock`` has seen every pod (no
    scheduler runs yet, so they all wait Pending)."""
    wanted = int(problem.services.demand.sum())
    step(f"creating {problem.services.size} Deployments, {wanted:,} pods")
    create_deployments(client, problem)
    wait_for(
        f"{wanted} pods to be created",
        lambda: clock.pods >= wanted,
        timeout_s=120.0 + 0.1 * wanted,
        every_s=1.0,
    )


def start_schedulers(
    c: Cluster,
    problem: Problem,
    settings: LiveSettings,
    *,
    choice: PlannerChoice,
    step: Callable[[str], None],
    laps: Laps,
) -> Schedulers:
    """For ``powercap``, create ``problem``'s powercap.io objects (with
    ``settings.resources``), start the extender on them and wait for its first plan (lap
    ``plan_s``; the extender plans once it has counted the Deployments' replicas); then
    start kube-scheduler, pointed at the extender if any."""
    schedulers = Schedulers()
    if settings.scheduler == "powercap":
        if settings.resources:
            # Before the extender starts: it lists them once to build its ledger's tree.
            step("creating the PowerDomains, PowerProfiles and PowerPolicies")
            use_resources(api_client(c.kubeconfig), problem)
        config = write_config(
            problem, c.run_dir / "powercap.json", choice, resources=settings.resources
        )
        step(f"starting the extender; {settings.planner} plans the cluster")
        extender, ports = start_extender(c, config)
        schedulers.extender, schedulers.extender_ports = extender, ports
        schedulers.watched.append(extender)
        wait_for(
            "the extender's first plan",
            lambda: bool(plan_gauges(ports.metrics)),
            # The solver's limit, plus building the model, which grows with the fleet.
            timeout_s=settings.planner_time_limit_s + 120.0 + 0.05 * problem.fleet.size,
            every_s=1.0,
        )
        schedulers.planner = plan_gauges(ports.metrics)
        laps("plan_s")

    wanted = int(problem.services.demand.sum())
    step(f"kube-scheduler ({settings.scheduler}) scheduling {wanted:,} pods")
    schedulers.watched.append(
        start_scheduler(
            c,
            schedulers.extender_ports.verbs if schedulers.extender_ports else None,
            stock=settings.scheduler == "default" and settings.stock_default,
        )
    )
    return schedulers


def replay_outcomes(
    c: Cluster,
    core: Any,
    problem: Problem,
    *,
    settings: LiveSettings,
    choice: PlannerChoice,
    extender: tuple[Process, ExtenderPorts] | None,
    step: Callable[[str], None],
    laps: Laps,
) -> tuple[ReplayOutcome | None, ReplayOutcome | None, ReplayOutcome | None]:
    """The replay of ``settings.replay`` on the placed cluster; with
    ``settings.baseline``, the same window without the controller run before it; with
    ``settings.without_limits``, the same window after it with the controller but no
    power limits (laps ``baseline_s``, ``replay_s``, ``without_limits_s``). ``(None,
    None, None)`` without a replay."""
    if settings.replay is None:
        return None, None, None
    from e2e.replay import replay_window

    baseline: ReplayOutcome | None = None
    if settings.baseline:
        without = replace(
            settings.replay,
            controller=False,
            speed=settings.baseline_speed or settings.replay.speed,
        )
        baseline, _ = replay_window(
            c,
            core,
            problem,
            replay=without,
            planner=choice,
            extender=extender,
            log_dir=LOG_DIR,
            step=step,
            resources=settings.resources,
        )
        laps("baseline_s")
    replayed, running = replay_window(
        c,
        core,
        problem,
        replay=settings.replay,
        planner=choice,
        extender=extender,
        log_dir=LOG_DIR,
        step=step,
        resources=settings.resources,
    )
    laps("replay_s")
    without_limits: ReplayOutcome | None = None
    if settings.without_limits and extender is not None and running is not None:
        without_limits, _ = replay_window(
            c,
            core,
            problem,
            replay=replace(settings.replay, power_limits=False),
            planner=choice,
            extender=(running, extender[1]),
            log_dir=LOG_DIR,
            step=step,
            resources=settings.resources,
        )
        laps("without_limits_s")
    return replayed, baseline, without_limits
