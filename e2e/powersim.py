"""The power simulator: DCGM-exporter (or Kepler) metrics for fake (KWOK) GPU nodes.

:class:`PowerSimulator` serves ``/metrics`` in the Prometheus text format: one
``DCGM_FI_DEV_POWER_USAGE`` gauge per GPU with the DCGM exporter's labels (or, with
``exporter="kepler"``, Kepler 0.10's energy counters, see :data:`KEPLER_CPU_ZONES`), computed at
each scrape from the pods bound to each node (a :class:`PodSource`, such as
:class:`StaticPods` kept current by a pod watch) and their services' watts — a
:class:`GridProfile` on the scenario grid or a :class:`ReplaySeries` from a replay file
(:func:`load_replay`) — on a compressed :class:`SimClock`, with seeded noise and
injectable surges (:class:`Surge`). :meth:`PowerSimulator.snapshot` gives the exact
:class:`Snapshot` a correct power source must read. :func:`sim_nodes`,
:func:`grid_profiles` and :func:`pods_of` build its inputs from a problem.

The model per node (idle split between GPUs and the rest, pods, noise, surges,
timestamps) and the replay file format: docs/power.md, "The power simulator".
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import orjson
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from e2e.exposition import metrics_handler
from extender.agent.fake import BOARDS, Board
from extender.cluster.pods import is_terminal, node_name_of, pod_gpus, pod_ref, pod_service
from extender.cluster.raw import ProtocolError, get_field
from placement.assignment import Assignment
from placement.grid import Grid
from placement.problem import Problem
from placement.throughput import DEFAULT_CURVE, ThroughputCurve
from placement.validation import ProblemsError, validation_problems

METRIC = "DCGM_FI_DEV_POWER_USAGE"
METRIC_HELP = "Power draw (in W)."
# The limits DCGM reports per GPU (dcgm-exporter's field names): the one set through NVML,
# and the enforced one (the least of every source of limits), what the GPU holds to.
MGMT_LIMIT_METRIC = "DCGM_FI_DEV_POWER_MGMT_LIMIT"
MGMT_LIMIT_HELP = "Power management limit (in W)."
ENFORCED_LIMIT_METRIC = "DCGM_FI_DEV_ENFORCED_POWER_LIMIT"
ENFORCED_LIMIT_HELP = "Current enforced power limit (in W)."
# The board of the simulated GPUs unless told otherwise (a key of extender.agent.fake.BOARDS).
DEFAULT_BOARD = "H100-SXM5-80GB"
SIM_TIME_METRIC = "powersim_simulated_time_seconds"
DEFAULT_MODEL = "NVIDIA H100 80GB HBM3"
# Kepler 0.10's node energy counters, in joules, labelled with the node in ``node_name``:
# one per GPU, and one per RAPL zone of the CPU. A node's non-GPU watts are drawn by the
# package (70 %) and the DRAM (30 %); ``core`` is part of the package, reported as well
# (as RAPL does), so a reader that adds every zone counts it twice.
KEPLER_GPU_METRIC = "kepler_node_gpu_joules_total"
KEPLER_CPU_METRIC = "kepler_node_cpu_joules_total"
KEPLER_CPU_ZONES: tuple[tuple[str, str, float], ...] = (
    ("package", "/sys/class/powercap/intel-rapl/intel-rapl:0", 0.7),
    ("core", "/sys/class/powercap/intel-rapl/intel-rapl:0/intel-rapl:0:0", 0.35),
    ("dram", "/sys/class/powercap/intel-rapl/intel-rapl:0/intel-rapl:0:1", 0.3),
)
Exporter = Literal["dcgm", "kepler"]
DAY_S = 86400


# --- inputs ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BoundPod:
    """A pod bound to ``node``, drawing its ``service``'s watts on ``gpus`` GPUs."""

    namespace: str
    name: str
    node: str
    service: str
    gpus: int = 1
    container: str = "server"


class PodSource(Protocol):
    """The pods bound to nodes right now; called on every scrape."""

    def bound_pods(self) -> Iterable[BoundPod]: ...


class StaticPods:
    """A pod list that can be changed while the simulator serves (thread-safe)."""

    def __init__(self, pods: Iterable[BoundPod] = ()) -> None:
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], BoundPod] = {(p.namespace, p.name): p for p in pods}

    def bound_pods(self) -> list[BoundPod]:
        with self._lock:
            return list(self._pods.values())

    def replace(self, pods: Iterable[BoundPod]) -> None:
        with self._lock:
            self._pods = {(p.namespace, p.name): p for p in pods}

    def add(self, pod: BoundPod) -> None:
        with self._lock:
            self._pods[(pod.namespace, pod.name)] = pod

    def remove(self, namespace: str, name: str) -> None:
        with self._lock:
            self._pods.pop((namespace, name), None)

    def apply(self, event: str, obj: Mapping[str, Any]) -> None:
        """Follow one watch event (``ADDED``, ``MODIFIED``, ``DELETED``) of a raw v1.Pod:
        a pod counts while it is bound and not terminal."""
        ref = pod_ref(obj)
        pod = None if event == "DELETED" else bound_pod(obj)
        if pod is None:
            self.remove(ref.namespace, ref.name)
        else:
            self.add(pod)


def bound_pod(obj: Mapping[str, Any], gpu_resource: str = "nvidia.com/gpu") -> BoundPod | None:
    """A raw v1.Pod as the simulator sees it, or ``None`` while it is unbound, once it is
    terminating or terminal, or when it names no service (``powercap.io/service`` or its
    owner). A terminating pod (``deletionTimestamp`` set, e.g. evicted) draws nothing: it
    leaves its Service's endpoints at once, so no new requests reach it, and what it
    still finishes is within the noise of a slot."""
    node = node_name_of(obj)
    service = pod_service(obj)
    meta = get_field(obj, "metadata")
    terminating = isinstance(meta, Mapping) and bool(get_field(meta, "deletionTimestamp"))
    if node is None or service is None or terminating or is_terminal(obj):
        return None
    try:
        gpus = pod_gpus(obj, gpu_resource)
    except ProtocolError:
        gpus = 0  # unreadable requests: the pod holds nothing the simulator can place
    spec = get_field(obj, "spec")
    containers = (get_field(spec, "containers") if isinstance(spec, Mapping) else None) or []
    first = containers[0] if containers and isinstance(containers[0], Mapping) else {}
    ref = pod_ref(obj)
    container = str(get_field(first, "name") or "")
    return BoundPod(ref.namespace, ref.name, node, service, gpus, container)


@dataclass(frozen=True, slots=True)
class SimNode:
    """A node: ``domains`` is its leaf domain then every ancestor (for surges by domain)."""

    name: str
    gpus: int
    idle_watts: float
    domains: tuple[str, ...] = ()


@dataclass
class SimClock:
    """Simulated unix seconds: ``start_s + (wall() − t0) × speed``. ``speed`` 600 runs
    a 10-minute slot per wall second; 0 stops simulated time at ``start_s``."""

    start_s: float
    speed: float = 1.0
    wall: Callable[[], float] = time.time
    t0: float = field(default=math.nan)

    def __post_init__(self) -> None:
        if math.isnan(self.t0):
            self.t0 = self.wall()

    def now(self) -> float:
        return self.start_s + (self.wall() - self.t0) * self.speed


class Profile(Protocol):
    def watts_at(self, sim_s: float) -> float:
        """Watts per replica above node idle at simulated instant ``sim_s``."""
        ...


@dataclass(frozen=True)
class GridProfile:
    """T values on ``grid``, e.g. a scenario service's profile."""

    grid: Grid
    values: NDArray[np.float64]

    def __post_init__(self) -> None:
        if self.values.shape != (self.grid.slots,):
            raise ValueError(f"{self.values.size} values, the grid has {self.grid.slots} slots")

    def watts_at(self, sim_s: float) -> float:
        return float(self.values[self.grid.slot_of(sim_s)])


@dataclass(frozen=True)
class ReplaySeries:
    """Measured watts in consecutive ``step_s`` slots from ``origin_s`` (midnight of
    replay day 0); repeats from its start when the run outlasts it."""

    step_s: float
    values: NDArray[np.float64]
    origin_s: float = 0.0

    def watts_at(self, sim_s: float) -> float:
        i = math.floor((sim_s - self.origin_s) / self.step_s) % self.values.size
        return float(self.values[i])


class ReplayFile(BaseModel):
    """The replay file format (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step_s: int = Field(gt=0)
    watts: dict[str, list[float]]

    @field_validator("watts")
    @classmethod
    def _series(cls, v: dict[str, list[float]]) -> dict[str, list[float]]:
        if not v:
            raise ValueError("no service series; give {service: [watts, ...]}")
        for name, series in v.items():
            if not series:
                raise ValueError(f"{name}: empty series")
            bad = [i for i, w in enumerate(series) if not (math.isfinite(w) and w >= 0)]
            if bad:
                raise ValueError(f"{name}: value {bad[0]} is {series[bad[0]]!r}; watts are >= 0")
        return v


def replay_profiles(data: Any, origin_s: float, source: str = "replay") -> dict[str, ReplaySeries]:
    """Series per service from parsed replay JSON; raises ``ProblemsError`` naming
    every ``path: problem``."""
    try:
        spec = ReplayFile.model_validate(data)
    except ValidationError as exc:
        raise ProblemsError(
            validation_problems(exc, reference="the replay format in e2e/powersim.py"), source
        ) from exc
    return {
        name: ReplaySeries(float(spec.step_s), np.asarray(series, dtype=np.float64), origin_s)
        for name, series in spec.watts.items()
    }


def load_replay(path: Path, origin_s: float) -> dict[str, ReplaySeries]:
    """:func:`replay_profiles` of a JSON file."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ProblemsError([f"cannot read: {exc}"], str(path)) from exc
    return replay_profiles(data, origin_s, str(path))


def midnight(unix_s: float) -> float:
    """Start (UTC) of the day ``unix_s`` is in: the origin of a replay run started then."""
    return float(math.floor(unix_s / DAY_S) * DAY_S)


@dataclass(frozen=True)
class Surge:
    """Extra power on some nodes between ``start_s`` and ``until_s`` (simulated time):
    pods' watts × ``factor``, plus ``extra_watts`` per node. It hits the nodes named in
    ``nodes`` and those under any of ``domains``; with neither, every node."""

    factor: float = 1.0
    extra_watts: float = 0.0
    nodes: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    start_s: float = -math.inf
    until_s: float = math.inf

    def hits(self, node: SimNode, sim_s: float) -> bool:
        if not (self.start_s <= sim_s < self.until_s):
            return False
        if not self.nodes and not self.domains:
            return True
        return node.name in self.nodes or not self.domains.isdisjoint(node.domains)


@dataclass(frozen=True, slots=True)
class GpuLimit:
    """One GPU's power limits in watts: ``management`` is the one set through NVML,
    ``enforced`` the one it holds to, ``default`` its board's default (its TDP)."""

    management: float
    enforced: float
    default: float


class GpuLimits(Protocol):
    """The power limits of each node's GPUs right now; called on every scrape."""

    def limits_of(self, node: str) -> Sequence[GpuLimit] | None:
        """``node``'s GPUs' limits in index order, or ``None``: none known (no limit)."""
        ...


class DefaultLimits:
    """Every GPU on its board's default limit: GPUs no one caps (no agent on the nodes)."""

    def __init__(self, gpus: Mapping[str, int], board: Board = BOARDS[DEFAULT_BOARD]) -> None:
        w = board.default_mw / 1000
        self._limits = {node: (GpuLimit(w, w, w),) * count for node, count in gpus.items()}

    def limits_of(self, node: str) -> Sequence[GpuLimit] | None:
        return self._limits.get(node)


def throughput_lost(curve: ThroughputCurve, demand_w: float, limit: GpuLimit) -> float:
    """The fraction of its throughput a GPU loses to its limit: 0 while the limit does not
    bind (the GPU demands no more than its enforced limit); else ``1 − curve(limit) /
    curve(demand)``, each as a fraction of the default limit, within the curve's
    ``[floor, 1]`` — what the GPU delivers at its limit relative to what it delivered at
    the power it wanted. Demand above the default limit counts as the default: a GPU held
    at its own default loses nothing to a cap."""
    # A GPU at its default limit (nearly all of them: uncapped) loses nothing, and every
    # snapshot asks this of every GPU: no need to evaluate the curve.
    if demand_w <= limit.enforced + 1e-9 or limit.default <= 0 or limit.enforced >= limit.default:
        return 0.0

    def at(watts: float) -> float:
        return curve.at(min(1.0, max(curve.floor, watts / limit.default)))

    return max(0.0, 1.0 - at(limit.enforced) / at(demand_w))


# --- what one scrape shows -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GpuSample:
    """One GPU: ``watts`` drawn, ``demand_watts`` wanted (``None``: as drawn, no limit
    known), its ``limit`` (``None``: none known) and the pod holding it."""

    node: str
    gpu: int
    watts: float
    pod: BoundPod | None
    demand_watts: float | None = None
    limit: GpuLimit | None = None


@dataclass(frozen=True)
class Snapshot:
    """Every GPU's watts at simulated instant ``sim_s``; ``node_watts`` are the node
    totals (GPUs + non-GPU draw), what a power source should read."""

    sim_s: float
    gpus: tuple[GpuSample, ...]
    node_gpu_watts: Mapping[str, float]
    node_watts: Mapping[str, float]
    unprofiled: tuple[str, ...] = ()
    pod_lost: Mapping[BoundPod, float] = field(default_factory=dict)

    def throughput_lost(self) -> float:
        """The GPU-weighted mean of the pods' throughput lost to power limits at this
        instant (0 with no pod on a GPU): see :func:`throughput_lost`."""
        weights = sum(p.gpus for p in self.pod_lost)
        if weights <= 0:
            return 0.0
        return sum(p.gpus * lost for p, lost in self.pod_lost.items()) / weights

    def domain_watts(self, nodes: Sequence[SimNode]) -> dict[str, float]:
        """Node totals summed into every domain the nodes name (leaf and ancestors)."""
        out: dict[str, float] = {}
        for node in nodes:
            watts = self.node_watts.get(node.name)
            if watts is None:
                continue
            for domain in node.domains:
                out[domain] = out.get(domain, 0.0) + watts
        return out


def gpu_uuid(node: str, gpu: int) -> str:
    """The UUID the simulator gives GPU ``gpu`` of ``node`` (stable across runs)."""
    return f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'powersim/{node}/{gpu}')}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class PowerSimulator:
    """Computes and serves DCGM metrics (see the module docstring).

    ``noise`` is the standard deviation of the multiplicative noise on pod watts (0:
    exact); it is seeded by ``seed`` and the simulated second, so two snapshots of one
    instant agree.

    Like the DCGM exporter, samples carry no timestamp by default: Prometheus stamps them
    with the scrape time and, when the exporter stops answering, marks its series stale,
    so they vanish from queries at once. ``timestamps=True`` stamps every sample with the
    time it was served, as exporters that cache readings (or a federating Prometheus) do;
    Prometheus then writes no staleness markers, and after the exporter stops its last
    samples stay visible, ageing, for the 5-minute lookback.

    ``exporter="kepler"`` serves Kepler 0.10's counters instead: at each scrape every
    counter grows by the watts of that instant times the wall-clock seconds since the
    previous scrape, so ``rate()`` over a window gives the mean watts of the window —
    exactly the snapshot's watts while they hold still (no noise, a flat profile).

    ``limit_series=False`` leaves the two DCGM limit gauges out of the exposition while
    the GPUs still hold to their limits: a replay, where nothing queries them and they
    would triple what each scrape carries."""

    def __init__(
        self,
        nodes: Sequence[SimNode],
        profiles: Mapping[str, Profile],
        pods: PodSource,
        *,
        clock: SimClock,
        gpu_idle_watts: float | None = None,
        noise: float = 0.0,
        seed: int = 0,
        model_name: str = DEFAULT_MODEL,
        timestamps: bool = False,
        exporter: Exporter = "dcgm",
        limits: GpuLimits | None = None,
        curves: Mapping[str, ThroughputCurve] | None = None,
        limit_series: bool = True,
    ) -> None:
        if noise < 0:
            raise ValueError("noise is a standard deviation, >= 0")
        self.nodes = {n.name: n for n in nodes}
        self.profiles = dict(profiles)
        self.pods = pods
        self.clock = clock
        self.noise = noise
        self.seed = seed
        self.model_name = model_name
        self.timestamps = timestamps
        self.exporter = exporter
        # GPU power limits (None: the GPUs draw whatever they demand, no limit series) and
        # the throughput curve of each service (DEFAULT_CURVE for the rest).
        self.limits = limits
        self.curves = dict(curves or {})
        self.limit_series = limit_series
        # Kepler counters: joules by exposition line (without its value), and when the
        # last scrape added to them (wall clock).
        self._joules: dict[str, float] = {}
        self._joules_at: float | None = None
        self._gpu_idle: dict[str, float] = {}
        for n in nodes:
            share = n.idle_watts / n.gpus if n.gpus else 0.0
            idle = share if gpu_idle_watts is None else gpu_idle_watts
            if n.gpus and n.gpus * idle > n.idle_watts + 1e-9:
                raise ValueError(
                    f"node {n.name}: {n.gpus} GPUs × {idle:g} W idle exceed its "
                    f"{n.idle_watts:g} W idle"
                )
            self._gpu_idle[n.name] = idle
        self._lock = threading.Lock()
        self._surges: list[Surge] = []
        # Label sets by (node, gpu, pod): formatting them was most of a scrape's time, and
        # at a replay's 10 scrapes a second a slow scrape times out.
        self._labels: dict[tuple[str, int, BoundPod | None], str] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- model -------------------------------------------------------------------------
    def non_gpu_watts(self, node: str) -> float:
        """The part of ``node``'s idle watts no GPU reports (the power source's
        ``nonGpuWatts`` for that node)."""
        n = self.nodes[node]
        return n.idle_watts - n.gpus * self._gpu_idle[node]

    def surge(
        self,
        *,
        factor: float = 1.0,
        extra_watts: float = 0.0,
        nodes: Iterable[str] = (),
        domains: Iterable[str] = (),
        start_s: float | None = None,
        until_s: float = math.inf,
    ) -> Surge:
        """Inject a surge from ``start_s`` (default: now, simulated) until ``until_s``."""
        s = Surge(
            factor,
            extra_watts,
            frozenset(nodes),
            frozenset(domains),
            self.clock.now() if start_s is None else start_s,
            until_s,
        )
        with self._lock:
            self._surges.append(s)
        return s

    def clear_surges(self) -> None:
        with self._lock:
            self._surges.clear()

    def _noise(self, sim_s: float, count: int) -> NDArray[np.float64]:
        if self.noise == 0 or count == 0:
            return np.ones(count)
        rng = np.random.default_rng([self.seed, math.floor(sim_s) & 0xFFFFFFFF])
        return np.maximum(0.0, 1.0 + self.noise * rng.standard_normal(count))

    def snapshot(self, sim_s: float | None = None) -> Snapshot:
        """What every GPU draws at ``sim_s`` (default: now, simulated)."""
        t = self.clock.now() if sim_s is None else sim_s
        with self._lock:
            surges = list(self._surges)
        on_node: dict[str, list[BoundPod]] = {}
        for pod in self.pods.bound_pods():
            if pod.node in self.nodes:
                on_node.setdefault(pod.node, []).append(pod)
        ordered = sorted(
            (p for ps in on_node.values() for p in ps), key=lambda p: (p.namespace, p.name)
        )
        noise = dict(zip(ordered, self._noise(t, len(ordered)), strict=True))
        unprofiled: set[str] = set()
        samples: list[GpuSample] = []
        pod_lost: dict[BoundPod, float] = {}
        gpu_sums: dict[str, float] = {}
        totals: dict[str, float] = {}
        for name, node in self.nodes.items():
            if node.gpus == 0:
                continue
            active = [s for s in surges if s.hits(node, t)]
            factor = math.prod(s.factor for s in active)
            extra = sum(s.extra_watts for s in active)
            watts = np.full(node.gpus, self._gpu_idle[name] + extra / node.gpus)
            holder: list[BoundPod | None] = [None] * node.gpus
            holds: dict[BoundPod, range] = {}
            free = 0
            for pod in sorted(on_node.get(name, []), key=lambda p: (p.namespace, p.name)):
                profile = self.profiles.get(pod.service)
                if profile is None:
                    unprofiled.add(pod.service)
                    draw = 0.0
                else:
                    draw = profile.watts_at(t) * float(noise[pod]) * factor
                if pod.gpus <= 0:
                    continue  # no GPU: nothing DCGM could see
                if free + pod.gpus <= node.gpus:
                    held = range(free, free + pod.gpus)
                    free += pod.gpus
                else:
                    held = range(node.gpus)  # over-committed node: spread over all
                holds[pod] = held
                for g in held:
                    watts[g] += draw / len(held)
                    if holder[g] is None:
                        holder[g] = pod
            limits = self.limits.limits_of(name) if self.limits is not None else None
            if limits is not None and len(limits) != node.gpus:
                limits = None  # a node whose GPUs the limits do not describe: unlimited
            demand = watts
            if limits is not None:
                watts = np.minimum(demand, [lim.enforced for lim in limits])
                for pod, held in holds.items():
                    curve = self.curves.get(pod.service, DEFAULT_CURVE)
                    # a replica sharded over GPUs runs at the pace of its slowest one
                    pod_lost[pod] = max(
                        throughput_lost(curve, float(demand[g]), limits[g]) for g in held
                    )
            else:
                pod_lost.update(dict.fromkeys(holds, 0.0))
            for g in range(node.gpus):
                samples.append(
                    GpuSample(
                        name,
                        g,
                        float(watts[g]),
                        holder[g],
                        None if limits is None else float(demand[g]),
                        None if limits is None else limits[g],
                    )
                )
            gpu_sums[name] = float(watts.sum())
            totals[name] = gpu_sums[name] + self.non_gpu_watts(name)
        return Snapshot(t, tuple(samples), gpu_sums, totals, tuple(sorted(unprofiled)), pod_lost)

    def render(self, snap: Snapshot, timestamp_ms: int | None = None) -> bytes:
        """The exposition text of ``snap``; with ``timestamp_ms`` every sample carries it."""
        stamp = "" if timestamp_ms is None else f" {timestamp_ms}"
        lines = [f"# HELP {METRIC} {METRIC_HELP}", f"# TYPE {METRIC} gauge"]
        for s in snap.gpus:
            lines.append(f"{METRIC}{{{self._label_set(s)}}} {s.watts!r}{stamp}")
        limited = [s for s in snap.gpus if s.limit is not None] if self.limit_series else []
        for metric, help_text in (
            (MGMT_LIMIT_METRIC, MGMT_LIMIT_HELP),
            (ENFORCED_LIMIT_METRIC, ENFORCED_LIMIT_HELP),
        ):
            if not limited:
                break
            lines.append(f"# HELP {metric} {help_text}")
            lines.append(f"# TYPE {metric} gauge")
            for s in limited:
                assert s.limit is not None
                value = s.limit.enforced if metric == ENFORCED_LIMIT_METRIC else s.limit.management
                lines.append(f"{metric}{{{self._label_set(s)}}} {value!r}{stamp}")
        lines.append(f"# HELP {SIM_TIME_METRIC} Simulated unix time of this scrape.")
        lines.append(f"# TYPE {SIM_TIME_METRIC} gauge")
        lines.append(f"{SIM_TIME_METRIC} {snap.sim_s!r}{stamp}")
        return ("\n".join(lines) + "\n").encode()

    def render_kepler(self, snap: Snapshot, elapsed_s: float) -> bytes:
        """Kepler 0.10's counters after ``elapsed_s`` more seconds at ``snap``'s watts."""
        rates: list[tuple[str, str, float]] = []
        for s in snap.gpus:
            labels = (
                f'gpu="{s.gpu}",gpu_uuid="{gpu_uuid(s.node, s.gpu)}",vendor="nvidia",'
                f'node_name="{_escape(s.node)}"'
            )
            rates.append((KEPLER_GPU_METRIC, labels, s.watts))
        for node in snap.node_gpu_watts:
            rest = self.non_gpu_watts(node)
            for zone, path, share in KEPLER_CPU_ZONES:
                labels = f'zone="{zone}",path="{path}",node_name="{_escape(node)}"'
                rates.append((KEPLER_CPU_METRIC, labels, rest * share))
        lines: list[str] = []
        with self._lock:
            for metric in (KEPLER_GPU_METRIC, KEPLER_CPU_METRIC):
                lines.append(f"# HELP {metric} Energy consumption at node level in joules.")
                lines.append(f"# TYPE {metric} counter")
                for name, labels, watts in rates:
                    if name != metric:
                        continue
                    key = f"{name}{{{labels}}}"
                    total = self._joules.get(key, 0.0) + watts * elapsed_s
                    self._joules[key] = total
                    lines.append(f"{key} {total!r}")
        lines.append(f"# HELP {SIM_TIME_METRIC} Simulated unix time of this scrape.")
        lines.append(f"# TYPE {SIM_TIME_METRIC} gauge")
        lines.append(f"{SIM_TIME_METRIC} {snap.sim_s!r}")
        return ("\n".join(lines) + "\n").encode()

    def _label_set(self, s: GpuSample) -> str:
        key = (s.node, s.gpu, s.pod)
        labels = self._labels.get(key)
        if labels is None:
            labels = (
                f'gpu="{s.gpu}",UUID="{gpu_uuid(s.node, s.gpu)}",device="nvidia{s.gpu}",'
                f'modelName="{_escape(self.model_name)}",Hostname="{_escape(s.node)}"'
            )
            if s.pod is not None:
                labels += (
                    f',container="{_escape(s.pod.container)}",'
                    f'namespace="{_escape(s.pod.namespace)}",pod="{_escape(s.pod.name)}"'
                )
            if len(self._labels) > 100_000:  # pods come and go; never grow without bound
                self._labels.clear()
            self._labels[key] = labels
        return labels

    # --- serving ---------------------------------------------------------------------------
    def scrape(self) -> bytes:
        """What ``/metrics`` answers now."""
        served = time.time()
        if self.exporter == "kepler":
            with self._lock:
                elapsed = 0.0 if self._joules_at is None else served - self._joules_at
                self._joules_at = served
            return self.render_kepler(self.snapshot(), elapsed)
        return self.render(self.snapshot(), math.floor(served * 1000) if self.timestamps else None)

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: any free port) in a daemon thread; returns the
        ``host:port`` to scrape."""
        if self._server is not None:
            raise RuntimeError("the simulator is already serving")
        self._server = ThreadingHTTPServer((host, port), metrics_handler(self.scrape))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="powersim", daemon=True
        )
        self._thread.start()
        return self.address

    @property
    def address(self) -> str:
        if self._server is None:
            raise RuntimeError("the simulator is not serving")
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def stop(self) -> None:
        """Stop serving (scrapes then fail, as when an exporter dies)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> PowerSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- from a scenario ------------------------------------------------------------------------
def sim_nodes(problem: Problem) -> list[SimNode]:
    """The problem's nodes, each with its leaf domain and every ancestor."""
    fleet, tree = problem.fleet, problem.tree
    return [
        SimNode(
            fleet.names[n],
            int(fleet.gpus[n]),
            float(fleet.idle_watts[n]),
            tuple(tree.names[a] for a in tree.ancestors(int(fleet.domain[n]))[::-1]),
        )
        for n in range(fleet.size)
    ]


def grid_profiles(problem: Problem) -> dict[str, GridProfile]:
    """Every service's profile on the problem's grid."""
    svc = problem.services
    return {name: GridProfile(problem.grid, svc.profiles[s]) for s, name in enumerate(svc.names)}


def pods_of(problem: Problem, assignment: Assignment, namespace: str = "default") -> list[BoundPod]:
    """One pod per placed replica (``<service>-<node>-<k>``), for runs without a cluster."""
    svc, fleet = problem.services, problem.fleet
    pods: list[BoundPod] = []
    for s, n in zip(*np.nonzero(assignment.counts), strict=True):
        for k in range(int(assignment.counts[s, n])):
            pods.append(
                BoundPod(
                    namespace,
                    f"{svc.names[s]}-{fleet.names[n]}-{k}",
                    fleet.names[n],
                    svc.names[s],
                    int(svc.gpus[s]),
                )
            )
    return pods
