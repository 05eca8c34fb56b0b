"""Replayed power on a placed KWOK cluster, with or without the companion controller.

:func:`replay_window` runs after :func:`e2e.backend.run_on_kwok` has placed a problem: the
power simulator serves the replayed watts of the pods the API server reports bound
(:class:`PodFeed`), a real Prometheus scrapes it, and with the controller ``powercap serve``
is restarted with ``power:`` and ``controller:`` sections (:func:`controller_section`) on a
grid compressed by the speed (:func:`compress`, :class:`CompressedGrid`), so no controller
code knows it is replayed; as the manifests ship it, the extender only tracks measured power
(its ledger's feedback) and ``powercap controller`` beside it, under its own ServiceAccount,
acts (stopped at the window's end). :class:`BreachMeter` integrates each domain's time over
its cap from the simulator's own values — the ground truth, so runs with and without the
controller are judged alike; :func:`controller_actions` and :func:`evicted_pods` read what
the controller did. It returns a :class:`placement.cluster_run.ReplayOutcome`.

The steps, the timings and the compressed grid: docs/whatif.md, "Replayed power".
"""

from __future__ import annotations

import math
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from prometheus_client.parser import text_string_to_metric_families

from e2e.agents import SimulatedAgents, simulated_agents
from e2e.cluster import Cluster, Process
from e2e.deploy import NAMESPACE, SERVICE_LABEL, PlannerChoice, pod_watch, powercap_config
from e2e.exposition import Exposition, exposition_server
from e2e.powersim import (
    PowerSimulator,
    Profile,
    SimClock,
    Snapshot,
    StaticPods,
    bound_pod,
    grid_profiles,
    replay_profiles,
    sim_nodes,
)
from e2e.prometheus import ScrapeJob, prometheus
from e2e.rbac import NAMESPACE as LEASE_NAMESPACE
from e2e.scheduler import ExtenderPorts, start_controller, start_extender
from placement.cluster_run import DAY_S, ReplayOutcome, ReplaySettings, speed_problem
from placement.grid import Grid
from placement.problem import Problem
from placement.provisioning import provisioning_of

# Wall seconds between two ground-truth samples (at speed 600: one simulated minute).
SAMPLE_S = 0.1
# Wall seconds between the extender's restart and the window's start: its mirror syncs,
# then the controller's, and the controller takes its Lease in that time.
LEAD_S = 12.0
# The Prometheus scrape interval, simulated seconds (a common DCGM exporter interval);
# never below FASTEST_S wall seconds.
SCRAPE_SIM_S = 30.0
# The fastest wall timing a replay asks of the controller, and of Prometheus (its scrape
# timeout is its interval: a scrape of 320 nodes' GPUs needs slack on a busy machine).
FASTEST_S = 0.1
FASTEST_SCRAPE_S = 0.2
# Scrapes a cap step waits at least before the next: a written limit shows in a reading
# only after the agent's round, the simulator's next sample and a scrape — about 1 s of
# wall time on a 2-core machine, five scrapes at the fastest. Shorter, the controller
# judges a step on readings taken before it showed and steps again.
CAP_SETTLE_SCRAPES = 5
# Prometheus's lookback (5 minutes, simulated) compressed like the rest, but over ten
# scrapes at least. An instant query reads every sample of the lookback: uncompressed, at
# five scrapes a wall second, that is 1,500 samples a series: the controller's queries
# (twenty a second) took 46 ms each at the median, and Prometheus more than a core of a
# 2-core machine (benchmarks/README.md, "Blind readings").
LOOKBACK_SIM_S = 300.0
LOOKBACK_SCRAPES = 10
# The default eviction rate window (5 minutes), simulated seconds.
EVICTION_WINDOW_S = 300.0


@dataclass(frozen=True)
class CompressedGrid:
    """The grid the controller runs on during a replay, and the wall instant ``t0`` at
    which simulated time is the window's start."""

    grid: Grid
    t0: float

    def spec(self) -> dict[str, Any]:
        return {
            "period": f"{self.grid.period_s}s",
            "step": f"{self.grid.step_s}s",
            "offset": f"{self.grid.offset_s}s" if self.grid.offset_s else 0,
        }


def compress(grid: Grid, speed: int, sim_start_s: float, *, not_before: float) -> CompressedGrid:
    """A grid whose slot of wall instant ``w`` is ``grid``'s slot of the simulated instant
    ``sim_start_s + (w − t0) × speed``, with ``t0 ≥ not_before``.

    Simulated ``s + g_off`` is ``speed × (w + off)`` with ``off = (sim_start_s + g_off) /
    speed − t0``; choosing ``t0``'s fraction equal to that quotient's makes ``off`` whole,
    and with a whole compressed step, slotting ``int(w) + off`` equals slotting ``w + off``.
    """
    quotient = (sim_start_s + grid.offset_s) / speed
    frac = quotient - math.floor(quotient)
    t0 = math.ceil(not_before) + frac
    period, step = grid.period_s // speed, grid.step_s // speed
    offset = round(quotient - t0) % period
    return CompressedGrid(Grid(period, step, offset), t0)


@dataclass
class HeldClock(SimClock):
    """A :class:`SimClock` held at ``start_s`` until its ``t0``: before the window the
    pods draw the window's first values, not (the series wrapping round) its last."""

    def now(self) -> float:
        return max(self.start_s, super().now())


def wall_seconds(sim_s: float, speed: float, minimum: float = 0.0) -> float:
    """``sim_s`` simulated seconds in wall seconds at ``speed``, to the millisecond (the
    resolution the config's durations are written in), at least ``minimum``."""
    return max(minimum, round(sim_s / speed, 3))


def scrape_interval(speed: float) -> float:
    """The Prometheus scrape interval of a replay at ``speed``, wall seconds."""
    return wall_seconds(SCRAPE_SIM_S, speed, FASTEST_SCRAPE_S)


def lookback(speed: float) -> float:
    """The Prometheus lookback of a replay at ``speed``, wall seconds."""
    return max(wall_seconds(LOOKBACK_SIM_S, speed), LOOKBACK_SCRAPES * scrape_interval(speed))


def controller_section(replay: ReplaySettings) -> dict[str, Any]:
    """The ``controller:`` section for a replay: simulated timings divided by the speed,
    the feedback hold (a day, the shipped default) and the power-limit steps included."""

    def dur(sim_s: float, minimum: float = 0.0) -> str:
        wall = wall_seconds(sim_s, replay.speed, minimum)
        return f"{round(wall * 1000)}ms" if wall else "0s"

    window = dur(EVICTION_WINDOW_S, FASTEST_S)
    return {
        "enabled": True,
        "period": dur(replay.period_s, FASTEST_S),
        "grace": dur(replay.grace_s),
        "settle": {
            "reshape": dur(replay.settle_reshape_s),
            "evict": dur(replay.settle_evict_s),
            "restore": dur(replay.settle_restore_s),
        },
        "evictions": {
            "perDomain": {"limit": 2, "window": window},
            "cluster": {"limit": 5, "window": window},
        },
        "feedback": {"hold": dur(replay.hold_s)},
        # Off, the controller neither caps nor reads NodePowerLimits (those an earlier
        # window left behind must not look like agents). A cap step waits
        # CAP_SETTLE_SCRAPES at least, so it is judged on measurements that show it.
        "powerLimits": {
            "enabled": replay.power_limits,
            "grace": dur(replay.limit_grace_s),
            "settle": {
                "cap": dur(replay.settle_cap_s, CAP_SETTLE_SCRAPES * scrape_interval(replay.speed)),
                "restore": dur(replay.settle_uncap_s),
                "hold": dur(replay.limit_hold_s),
                "maxHold": dur(max(replay.limit_max_hold_s, replay.limit_hold_s)),
            },
        },
        "victimTimeLimit": "1s",
        "lease": {
            "namespace": LEASE_NAMESPACE,
            "duration": "4s",
            "renewDeadline": "3s",
            "retryPeriod": "1s",
        },
    }


class PodFeed:
    """Keeps a :class:`StaticPods` equal to the API server's bound, running scenario pods,
    from a list+watch (:class:`extender.cluster.mirror.Reflector`, in a thread: changes arrive as
    they happen and cost the API server nothing between them), and remembers each
    scenario pod's service and the simulated instant it started terminating or went."""

    def __init__(self, core: Any, into: StaticPods, clock: Callable[[], float]) -> None:
        self.into = into
        self.clock = clock
        self.service: dict[str, str] = {}
        self.gone_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._watch = pod_watch(core, "replay-pod-feed", self._replace, on_event=self._event)

    @staticmethod
    def _ours(obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return meta.get("namespace") == NAMESPACE and SERVICE_LABEL in (meta.get("labels") or {})

    def _note(self, event: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        with self._lock:
            self.service[name] = str(meta["labels"][SERVICE_LABEL])
            if (event == "DELETED" or meta.get("deletionTimestamp")) and name not in self.gone_at:
                self.gone_at[name] = self.clock()

    def _replace(self, items: list[dict[str, Any]]) -> None:
        ours = [obj for obj in items if self._ours(obj)]
        for obj in ours:
            self._note("ADDED", obj)
        self.into.replace(p for obj in ours if (p := bound_pod(obj)) is not None)

    def _event(self, event: str, obj: dict[str, Any]) -> None:
        if self._ours(obj):
            self._note(event, obj)
            self.into.apply(event, obj)

    def __enter__(self) -> PodFeed:
        self._watch.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._watch.__exit__(*exc)


@dataclass
class BreachMeter:
    """Integrates, per domain, the simulated seconds its power was over its cap, from
    successive snapshots within ``[start_s, end_s)``: each sample's state holds until the
    next sample."""

    problem: Problem
    start_s: float
    end_s: float
    seconds: np.ndarray = field(init=False)
    daily: dict[int, float] = field(default_factory=dict)
    samples: int = 0
    _last: tuple[float, np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.seconds = np.zeros(self.problem.tree.size)

    def add(self, sim_s: float, domain_watts: Mapping[str, float]) -> None:
        tree = self.problem.tree
        slot = self.problem.grid.slot_of(sim_s)
        watts = np.array([domain_watts.get(name, 0.0) for name in tree.names])
        over = watts > tree.caps[:, slot] + 1e-6
        if self._last is not None:
            self._credit(self._last[0], min(sim_s, self.end_s), self._last[1])
        self._last = (max(sim_s, self.start_s), over)
        self.samples += 1

    def close(self) -> None:
        """Credit the last sample up to the window's end."""
        if self._last is not None:
            self._credit(self._last[0], self.end_s, self._last[1])
            self._last = None

    def _credit(self, a: float, b: float, over: np.ndarray) -> None:
        a = max(a, self.start_s)
        while b > a:
            day = int(a // DAY_S)
            upto = min(b, (day + 1) * DAY_S)
            span = upto - a
            self.seconds += over * span
            self.daily[day] = self.daily.get(day, 0.0) + float(over.sum()) * span / 60.0
            a = upto


@dataclass
class ThroughputMeter:
    """The time- and GPU-weighted mean of the throughput lost to GPU power limits within
    ``[start_s, end_s)``, from successive snapshots (each sample's losses hold until the
    next sample): ``Σ gpus × lost × dt / Σ gpus × dt`` over the pods running on GPUs."""

    start_s: float
    end_s: float
    lost: float = 0.0
    weight: float = 0.0
    _last: tuple[float, float, float] | None = None  # (since, Σ gpus × lost, Σ gpus)

    def add(self, snap: Snapshot) -> None:
        if self._last is not None:
            self._credit(min(snap.sim_s, self.end_s))
        gpus = sum(p.gpus for p in snap.pod_lost)
        lost = sum(p.gpus * v for p, v in snap.pod_lost.items())
        self._last = (max(snap.sim_s, self.start_s), lost, float(gpus))

    def close(self) -> None:
        if self._last is not None:
            self._credit(self.end_s)
            self._last = None

    def _credit(self, upto: float) -> None:
        assert self._last is not None
        since, lost, gpus = self._last
        span = max(0.0, upto - max(since, self.start_s))
        self.lost += lost * span
        self.weight += gpus * span

    @property
    def fraction(self) -> float:
        return self.lost / self.weight if self.weight > 0 else 0.0


def with_cap_count(
    actions: Mapping[str, int], agents: SimulatedAgents | None, *, controller: bool
) -> dict[str, int]:
    """``actions`` with ``cap`` when power limits are simulated (``agents``): the
    controller's own count if it reports one, else the NodePowerLimit writes asking a limit
    the agents saw (0 without the controller)."""
    out = dict(actions)
    if agents is not None and "cap" not in out:
        out["cap"] = agents.spec_writes if controller else 0
    return out


def controller_actions(port: int) -> dict[str, int]:
    """``powercap_controller_actions_total`` summed by kind (dry runs left out), from the
    extender's metrics ``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "powercap_controller_actions_total" and s.labels.get("dry_run") != "true":
                kind = s.labels.get("kind", "")
                out[kind] = out.get(kind, 0) + int(s.value)
    return {k: v for k, v in sorted(out.items()) if v}


def evicted_pods(core: Any) -> set[str]:
    """Names of the pods the controller evicted (its ``PowerCapEvict`` Events)."""
    events = orjson.loads(
        core.list_namespaced_event(
            NAMESPACE, field_selector="reason=PowerCapEvict", _preload_content=False
        ).data
    )["items"]
    return {str(e["involvedObject"]["name"]) for e in events}


@contextmanager
def _agents(
    c: Cluster, problem: Problem, replay: ReplaySettings
) -> Iterator[SimulatedAgents | None]:
    """With power limits, a simulated agent on every fake node for the window (``None``
    without: no agent runs, the GPUs draw what their pods demand)."""
    if not replay.power_limits:
        yield None
        return
    nodes = {n.name: n.gpus for n in sim_nodes(problem)}
    with simulated_agents(c, nodes) as agents:
        yield agents


def _simulator(
    problem: Problem, replay: ReplaySettings, pods: StaticPods, agents: SimulatedAgents | None
) -> PowerSimulator:
    profiles: dict[str, Profile] = dict(grid_profiles(problem))
    profiles.update(
        replay_profiles({"step_s": replay.step_s, "watts": dict(replay.watts)}, origin_s=0.0)
    )
    curves = dict(zip(problem.services.names, provisioning_of(problem).curves, strict=True))
    # Simulated time stands still at the window's start until the run sets the real clock.
    return PowerSimulator(
        sim_nodes(problem),
        profiles,
        pods,
        clock=SimClock(replay.sim_start_s, 0.0),
        limits=agents,
        curves=curves,
        # Nothing in a replay queries the limit gauges: without them a scrape of the
        # capped window carries what one of the uncapped windows does.
        limit_series=False,
    )


@contextmanager
def _served(c: Cluster, sim: PowerSimulator) -> Iterator[tuple[Exposition, str]]:
    """The simulator's exposition, published now and served from a process of its own
    (:mod:`e2e.exposition`): the file to publish each sample to, and the address to scrape."""
    exposition = Exposition(c.run_dir / "powersim.prom")
    exposition.publish(sim.render(sim.snapshot()))
    with exposition_server(exposition.path, c.logs_dir / "powersim-exposition.log") as address:
        yield exposition, address


def replay_window(
    c: Cluster,
    core: Any,
    problem: Problem,
    *,
    replay: ReplaySettings,
    planner: PlannerChoice,
    extender: tuple[Process, ExtenderPorts] | None,
    log_dir: Path,
    step: Callable[[str], None],
    resources: bool = False,
) -> tuple[ReplayOutcome, Process | None]:
    """Replay ``replay``'s window on the placed cluster (see the module doc); returns the
    outcome and the extender process now running (restarted with the controller). With
    ``resources`` the restarted extender and the controller run on the powercap.io objects
    the placement ran on (their slots are the compressed grid's, one for one)."""
    speed = replay.speed
    start, end = replay.sim_start_s, replay.sim_start_s + replay.duration_s
    pods = StaticPods()
    clock_box: list[SimClock] = []

    def sim_now() -> float:
        return clock_box[0].now() if clock_box else start

    running = extender[0] if extender is not None else None
    # Evictions are counted from Events, which outlive a window: only this window's count.
    evicted_before = evicted_pods(core) if replay.controller else set()
    acting: tuple[Process, int] | None = None  # the controller, with the controller on
    with (
        _agents(c, problem, replay) as agents,
        _served(c, sim := _simulator(problem, replay, pods, agents)) as (exposition, address),
        PodFeed(core, pods, sim_now) as feed,
        prometheus(
            [ScrapeJob("powersim", [address], scrape_interval(speed))],
            log_dir,
            lookback_s=lookback(speed),
        ) as prom,
    ):
        prom.wait_for_targets()
        if replay.controller:
            if extender is None:
                raise ValueError("the controller runs in the extender: replay it with powercap")
            if (why := speed_problem(problem.grid, speed)) is not None:
                raise ValueError(f"speed {why}")
            compressed = compress(problem.grid, int(speed), start, not_before=time.time() + LEAD_S)
            config = powercap_config(problem, planner, resources=resources)
            config["grid"] = compressed.spec()
            config["power"] = {
                "url": prom.url,
                "nonGpuWatts": {"default": 0.0},
                "staleness": f"{round(max(1.0, 5 * scrape_interval(speed)) * 1000)}ms",
                "timeout": "2s",
            }
            config["controller"] = controller_section(replay)
            path = c.run_dir / "powercap-replay.json"
            path.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
            clock: SimClock = HeldClock(start, speed, t0=compressed.t0)
            step("restarting the extender with the controller")
            proc, ports = extender
            proc.stop()
            running, _ = start_extender(c, path, ports=ports)
            acting = start_controller(c, path)
        else:
            clock = HeldClock(start, speed, t0=math.ceil(time.time()) + 1.0)
        sim.clock = clock
        clock_box.append(clock)
        hours = replay.duration_s / 3600
        step(
            f"replaying {hours:g} h from day {replay.day} at speed {speed:g} "
            f"({replay.duration_s / speed:.0f} s), "
            f"controller {'on' if replay.controller else 'off'}"
        )
        meter = BreachMeter(problem, start, end)
        lost = ThroughputMeter(start, end)
        while True:
            if running is not None and not running.alive():
                raise RuntimeError(f"powercap serve exited:\n{running.tail()}")
            if acting is not None and not acting[0].alive():
                raise RuntimeError(f"powercap controller exited:\n{acting[0].tail()}")
            snap = sim.snapshot()
            exposition.publish(sim.render(snap))
            if snap.sim_s >= end:
                break
            if snap.sim_s >= start:
                meter.add(snap.sim_s, snap.domain_watts(list(sim.nodes.values())))
                lost.add(snap)
            time.sleep(SAMPLE_S)
        meter.close()
        lost.close()
        actions = with_cap_count(
            controller_actions(acting[1]) if acting is not None else {},
            agents,
            controller=acting is not None,
        )
        evicted = evicted_pods(core) - evicted_before if replay.controller else set()
        if acting is not None:  # nothing acts on the cluster after its window
            acting[0].stop()

    priorities = {
        name: int(problem.services.priority[s]) for s, name in enumerate(problem.services.names)
    }
    by_priority: dict[int, int] = {}
    by_day: dict[int, int] = {}
    for name in evicted:
        prio = priorities.get(feed.service.get(name, ""), 0)
        by_priority[prio] = by_priority.get(prio, 0) + 1
        day = int(feed.gone_at.get(name, end) // DAY_S)
        by_day[day] = by_day.get(day, 0) + 1
    per_domain = {
        problem.tree.names[d]: round(float(meter.seconds[d]) / 60.0, 1)
        for d in np.flatnonzero(meter.seconds)
    }
    outcome = ReplayOutcome(
        breach_domain_minutes=round(float(meter.seconds.sum()) / 60.0, 1),
        domain_breach_minutes=per_domain,
        daily_breach_minutes={d: round(m, 1) for d, m in sorted(meter.daily.items())},
        actions=actions,
        evicted_by_priority=dict(sorted(by_priority.items(), reverse=True)),
        evictions_by_day=dict(sorted(by_day.items())),
        window={
            "day": replay.day,
            "start_s": replay.start_s,
            "duration_s": replay.duration_s,
            "speed": speed,
            "controller": replay.controller,
            "power_limits": replay.power_limits,
        },
        samples=meter.samples,
        throughput_lost_fraction=round(lost.fraction, 6),
    )
    return outcome, running
