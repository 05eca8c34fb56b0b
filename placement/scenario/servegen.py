"""Scenarios built from ServeGen production traces: real clients, real asynchrony.

:func:`build_servegen` (behind ``powercap scenario from-servegen``) reads the per-client
``chunk-N-trace.csv`` files (:func:`trace_files`, :func:`read_rates`), chooses and sizes
the clients (:func:`size_clients`, :class:`Sizing`, :class:`ClientSizing`) on a
:class:`Topology`, and returns a :class:`ServeGenScenario`: the explicit scenario spec and
the sizing. :func:`scenario_from_servegen` returns the spec alone. :func:`replay_watts`
gives what the placed replicas draw on the days after the training window.

The rules (training window, eligible clients, sizing on a quantile, replica counts,
profiles, priority tiers) and why the default topology is power-bound are in
docs/scenarios.md, "Scenarios from ServeGen traces".
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from placement.powermodel import H100_LLAMA70B_TP4, PowerCurve
from placement.scenario.spec import API_VERSION, ScenarioSpec

STEP_S = 600


SLOTS_PER_DAY = 86400 // STEP_S


_CHUNK = re.compile(r"^chunk-(\d+)-trace\.csv$")


_COLUMNS = "timestamp_s, rate_req_per_s, cv, arrival_dist, param1, param2"


# Priority per volume tier, largest third first.
TIER_PRIORITIES = (200, 100, 0)


PathLike = str | Path


@dataclass(frozen=True)
class Topology:
    """A uniform power tree: site → ``rows`` rows → ``racks_per_row`` racks of nodes.

    ``idle_watts`` is per node; ``nameplate_watts`` is the rated draw above idle per
    8 GPUs (DGX H100: 10.2 kW rated − 2 kW idle). A cap given in watts wins; otherwise
    a rack's cap is ``rack_cap_fraction × Σ (idle + nameplate)`` of its nodes, a row's
    ``row_fraction × Σ`` its racks' caps and the site's ``site_fraction × Σ`` its rows'.
    The defaults oversubscribe the rack PDUs 2:1 against nameplate (a 40.8 kW PDU for
    eight 10.2 kW servers) and rows and site mildly, so power, not GPUs, is short.
    """

    rows: int = 4
    racks_per_row: int = 10
    nodes_per_rack: int = 8
    gpus_per_node: int = 8
    idle_watts: float = 2000.0
    nameplate_watts: float = 8200.0
    rack_cap: float | None = None
    row_cap: float | None = None
    site_cap: float | None = None
    rack_cap_fraction: float = 0.5
    row_fraction: float = 0.9
    site_fraction: float = 0.9

    def __post_init__(self) -> None:
        for name in ("rows", "racks_per_row", "nodes_per_rack", "gpus_per_node"):
            if getattr(self, name) < 1:
                raise ValueError(f"topology: {name} must be >= 1, got {getattr(self, name)}")
        if self.idle_watts < 0 or self.nameplate_watts <= 0:
            raise ValueError("topology: idle_watts must be >= 0 and nameplate_watts > 0")
        for name in ("rack_cap", "row_cap", "site_cap"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"topology: {name} must be a positive number of watts")
        for name in ("rack_cap_fraction", "row_fraction", "site_fraction"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"topology: {name} must be > 0, got {value}")

    @property
    def nodes(self) -> int:
        return self.rows * self.racks_per_row * self.nodes_per_rack

    def nameplate_per_gpu(self) -> float:
        return self.nameplate_watts / 8.0

    def rack_cap_watts(self) -> float:
        if self.rack_cap is not None:
            return float(self.rack_cap)
        node = self.idle_watts + self.nameplate_per_gpu() * self.gpus_per_node
        return self.rack_cap_fraction * self.nodes_per_rack * node

    def row_cap_watts(self) -> float:
        if self.row_cap is not None:
            return float(self.row_cap)
        return self.row_fraction * self.racks_per_row * self.rack_cap_watts()

    def site_cap_watts(self) -> float:
        if self.site_cap is not None:
            return float(self.site_cap)
        return self.site_fraction * self.rows * self.row_cap_watts()

    def domains_and_nodes(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The explicit ``domains`` and ``nodes`` lists of a scenario file."""
        domains: list[dict[str, Any]] = [{"name": "site", "cap": round(self.site_cap_watts())}]
        nodes: list[dict[str, Any]] = []
        for r in range(1, self.rows + 1):
            row = f"row-{r}"
            domains.append({"name": row, "parent": "site", "cap": round(self.row_cap_watts())})
            for k in range(1, self.racks_per_row + 1):
                rack = f"rack-{r}-{k:02d}"
                domains.append({"name": rack, "parent": row, "cap": round(self.rack_cap_watts())})
                for _ in range(self.nodes_per_rack):
                    nodes.append(
                        {
                            "name": f"gpu-{len(nodes) + 1:04d}",
                            "domain": rack,
                            "gpus": self.gpus_per_node,
                            "idleWatts": self.idle_watts,
                        }
                    )
        return domains, nodes


@dataclass(frozen=True)
class ClientSizing:
    """How one trace became one service.

    ``peak_rate`` is the sizing quantile of the trace's active training rates (trace
    req/s); ``rate_scale`` converts a trace rate to the service's rate, so one replica
    serves ``rate × rate_scale / replicas`` req/s (``capacity_rps`` at ``peak_rate``).
    """

    name: str
    path: Path
    replicas: int
    rate_scale: float
    peak_rate: float
    mean_rate: float
    priority: int

    def replica_rate(self, rate: NDArray[np.float64]) -> NDArray[np.float64]:
        """Requests/s one replica serves when the trace shows ``rate``."""
        return rate * (self.rate_scale / self.replicas)


@dataclass(frozen=True)
class Sizing:
    """The sizing of every chosen client; what :func:`replay_watts` needs."""

    train_days: int
    quantile: float
    clients: tuple[ClientSizing, ...]

    def client(self, name: str) -> ClientSizing:
        for c in self.clients:
            if c.name == name:
                return c
        known = ", ".join(c.name for c in self.clients[:6])
        raise ValueError(f"servegen: no sized client {name!r} (sized: {known}, ...)")


@dataclass(frozen=True)
class ServeGenScenario:
    spec: ScenarioSpec
    sizing: Sizing


def _as_dirs(dirs: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(dirs, str | Path):
        return [Path(dirs)]
    return [Path(d) for d in dirs]


def trace_files(dirs: PathLike | Sequence[PathLike]) -> dict[str, Path]:
    """``{client name: trace file}`` for every ``chunk-N-trace.csv`` under ``dirs``.

    A directory may hold the traces itself (``.../language/m-large``) or further down
    (``.../servegen`` finds ``language/m-large`` and ``language/m-mid``). Clients are
    named ``<folder>-<N>``. Raises ``ValueError`` naming the directory and the fix.
    """
    found: dict[str, Path] = {}
    paths = _as_dirs(dirs)
    if not paths:
        raise ValueError("servegen: no directory given; pass folders of chunk-N-trace.csv files")
    for directory in paths:
        if not directory.is_dir():
            raise ValueError(
                f"servegen: {directory} is not a directory; pass a folder holding "
                "chunk-N-trace.csv files, e.g. ../shared/data/servegen/language/m-large"
            )
        files = [p for p in directory.glob("chunk-*-trace.csv") if _CHUNK.match(p.name)]
        if not files:
            files = [p for p in directory.rglob("chunk-*-trace.csv") if _CHUNK.match(p.name)]
        if not files:
            raise ValueError(
                f"servegen: {directory} holds no chunk-N-trace.csv files; pass a ServeGen "
                "client folder such as ../shared/data/servegen/language/m-large"
            )
        for path in sorted(files, key=lambda p: (str(p.parent), _chunk_number(p))):
            name = f"{path.parent.name}-{_chunk_number(path)}"
            if name in found and found[name] != path:
                raise ValueError(
                    f"servegen: two traces would both be named {name!r} "
                    f"({found[name]} and {path}); pass folders with different names"
                )
            found[name] = path
    return found


def _chunk_number(path: Path) -> int:
    match = _CHUNK.match(path.name)
    assert match is not None
    return int(match.group(1))


def _first_bad_line(path: Path) -> str:
    """Where and why a trace does not parse; only run once loading has failed."""
    with path.open() as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue  # loadtxt skips these too
            fields = line.strip().split(",")
            try:
                float(fields[0])
                float(fields[1])
            except (ValueError, IndexError):
                return f"malformed row {number} {line.strip()[:60]!r}; expected rows of {_COLUMNS}"
    return f"malformed rows; expected rows of {_COLUMNS}"


def read_rates(path: Path, days: int | None = None) -> NDArray[np.float64]:
    """The request rates of one trace as a (days × 144) matrix, req/s.

    ``days`` keeps only the first days (and requires that many); without it every whole
    day is kept and a trailing partial day dropped. Raises ``ValueError`` naming the
    file and row for malformed rows, windows that are not consecutive 10-minute steps
    from a midnight, and negative or non-finite rates.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # empty input: reported below
            data = np.loadtxt(path, delimiter=",", usecols=(0, 1), ndmin=2, dtype=np.float64)
    except ValueError:
        raise ValueError(f"servegen: {path}: {_first_bad_line(path)}") from None
    except OSError as exc:
        raise ValueError(f"servegen: cannot read {path}: {exc}") from None
    if data.shape[0] == 0:
        raise ValueError(f"servegen: {path} is empty; expected rows of {_COLUMNS}")
    ts, rates = data[:, 0], data[:, 1]
    expected = ts[0] + STEP_S * np.arange(ts.size)
    if ts[0] % 86400 != 0 or not np.array_equal(ts, expected):
        bad = 0 if ts[0] % 86400 else int(np.flatnonzero(ts != expected)[0])
        raise ValueError(
            f"servegen: {path}: row {bad + 1} has timestamp {ts[bad]:g}; rows must be "
            f"consecutive {STEP_S} s windows starting at a midnight (a multiple of 86400)"
        )
    bad_rate = ~np.isfinite(rates) | (rates < 0)
    if bad_rate.any():
        row = int(np.flatnonzero(bad_rate)[0])
        raise ValueError(
            f"servegen: {path}: row {row + 1} has rate {float(rates[row]):g}; "
            "rates must be finite and >= 0 req/s"
        )
    available = ts.size // SLOTS_PER_DAY
    keep = available if days is None else days
    if keep > available:
        raise ValueError(
            f"servegen: {path} holds {available} whole days but {keep} are needed; "
            "lower train_days (or the replayed days)"
        )
    return rates[: keep * SLOTS_PER_DAY].reshape(keep, SLOTS_PER_DAY)


def _peak_rates(train: NDArray[np.float64], quantile: float) -> NDArray[np.float64]:
    """Per client, the ``quantile`` of its rates over the windows with traffic.

    ``train`` is (clients × windows); a client with no traffic gets 0.
    """
    peaks = np.zeros(train.shape[0])
    some = (train > 0).any(axis=1)  # nanquantile warns on rows with no traffic at all
    if some.any():
        active = np.where(train[some] > 0, train[some], np.nan)
        peaks[some] = np.nanquantile(active, quantile, axis=1)
    return peaks


def size_clients(
    dirs: PathLike | Sequence[PathLike],
    services: int = 40,
    train_days: int = 7,
    *,
    curve: PowerCurve = H100_LLAMA70B_TP4,
    quantile: float = 0.95,
    seed: int = 0,
    demand_scale: float = 1.0,
    max_replicas: int = 64,
    min_mean_rate: float = 0.1,
    rate_scale: float | None = None,
) -> tuple[Sizing, dict[str, NDArray[np.float64]]]:
    """Choose and size ``services`` clients (rules: the module docstring, steps 1–4).

    ``rate_scale=None`` sizes by volume (``demand_scale``, ``max_replicas``); a number
    sizes linearly on each client's peak rate times ``rate_scale`` (``demand_scale``
    must then stay 1). Returns the sizing and every chosen client's training rates,
    (train_days × 144).
    """
    if services < 1:
        raise ValueError(f"servegen: services must be >= 1, got {services}")
    if train_days < 1:
        raise ValueError(f"servegen: train_days must be >= 1, got {train_days}")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"servegen: quantile must be in (0, 1], got {quantile}")
    if not (math.isfinite(demand_scale) and demand_scale > 0):
        raise ValueError(f"servegen: demand_scale must be > 0, got {demand_scale}")
    if max_replicas < 1:
        raise ValueError(f"servegen: max_replicas must be >= 1, got {max_replicas}")
    if rate_scale is not None:
        if not (math.isfinite(rate_scale) and rate_scale > 0):
            raise ValueError(f"servegen: rate_scale must be > 0, got {rate_scale}")
        if demand_scale != 1.0:
            raise ValueError(
                "servegen: give either rate_scale (linear sizing on the peak rate) or "
                "demand_scale (sizing by volume), not both"
            )
    files = trace_files(dirs)
    names = list(files)
    train = np.stack([read_rates(files[n], train_days) for n in names])  # (C × days × 144)
    flat = train.reshape(len(names), -1)
    means = flat.mean(axis=1)
    peaks = _peak_rates(flat, quantile)
    eligible = np.flatnonzero((means >= min_mean_rate) & (peaks > 0))
    if eligible.size < services:
        where = ", ".join(str(d) for d in _as_dirs(dirs))
        raise ValueError(
            f"servegen: asked for {services} services but only {eligible.size} of the "
            f"{len(names)} clients in {where} have a mean rate >= {min_mean_rate:g} req/s "
            f"over the first {train_days} days; lower services or min_mean_rate, or add "
            "another client folder"
        )
    # Highest mean first, ties by name (names are unique, so the order is total).
    ranked = sorted(eligible.tolist(), key=lambda c: (-means[c], names[c]))
    if seed == 0:
        chosen = ranked[:services]
    else:
        picks = np.random.default_rng(seed).choice(len(ranked), size=services, replace=False)
        chosen = [ranked[i] for i in sorted(picks.tolist())]
    top = float(means[chosen[0]])
    clients: list[ClientSizing] = []
    for rank, c in enumerate(chosen):
        peak = float(peaks[c])
        if rate_scale is None:
            volume = math.sqrt(float(means[c]) / top)
            replicas = int(np.clip(round(demand_scale * max_replicas * volume), 1, max_replicas))
            scale = replicas * curve.capacity_rps / peak
        else:
            wanted = math.ceil(peak * rate_scale / curve.capacity_rps)
            replicas = min(max(wanted, 1), max_replicas)
            # Clamped at the maximum: keep the traffic those replicas serve at capacity
            # rather than run every replica saturated around the clock.
            scale = min(rate_scale, replicas * curve.capacity_rps / peak)
        tier = min(len(TIER_PRIORITIES) - 1, rank * len(TIER_PRIORITIES) // services)
        clients.append(
            ClientSizing(
                name=names[c],
                path=files[names[c]],
                replicas=replicas,
                rate_scale=scale,
                peak_rate=peak,
                mean_rate=float(means[c]),
                priority=TIER_PRIORITIES[tier],
            )
        )
    sizing = Sizing(train_days=train_days, quantile=quantile, clients=tuple(clients))
    return sizing, {names[c]: train[c] for c in chosen}


def build_servegen(
    dirs: PathLike | Sequence[PathLike],
    services: int = 40,
    train_days: int = 7,
    *,
    curve: PowerCurve = H100_LLAMA70B_TP4,
    topology: Topology = Topology(),
    quantile: float = 0.95,
    seed: int = 0,
    name: str = "servegen",
    demand_scale: float = 1.0,
    max_replicas: int = 64,
    min_mean_rate: float = 0.1,
    rate_scale: float | None = None,
) -> ServeGenScenario:
    """:func:`scenario_from_servegen` plus the :class:`Sizing` it used (for replays)."""
    if curve.gpus_per_replica > topology.gpus_per_node:
        raise ValueError(
            f"servegen: a replica needs {curve.gpus_per_replica} GPUs but a node has "
            f"{topology.gpus_per_node}; change the curve's GPUs or the topology"
        )
    sizing, train = size_clients(
        dirs,
        services=services,
        train_days=train_days,
        curve=curve,
        quantile=quantile,
        seed=seed,
        demand_scale=demand_scale,
        max_replicas=max_replicas,
        min_mean_rate=min_mean_rate,
        rate_scale=rate_scale,
    )
    nameplate = topology.nameplate_per_gpu() * curve.gpus_per_replica
    service_specs: list[dict[str, Any]] = []
    for client in sizing.clients:
        watts = curve.replica_watts(client.replica_rate(train[client.name]))  # (days × 144)
        profile = np.quantile(watts, quantile, axis=0)
        service_specs.append(
            {
                "name": client.name,
                "replicas": client.replicas,
                "gpusPerReplica": curve.gpus_per_replica,
                "priority": client.priority,
                "nameplateWatts": nameplate,
                "profile": [round(float(w), 1) for w in profile],
            }
        )
    domains, nodes = topology.domains_and_nodes()
    spec = ScenarioSpec.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": "Scenario",
            "metadata": {"name": name},
            "grid": {"period": "24h", "step": "10m"},
            "domains": domains,
            "nodes": nodes,
            "services": service_specs,
        }
    )
    return ServeGenScenario(spec=spec, sizing=sizing)


def scenario_from_servegen(dirs: PathLike | Sequence[PathLike], **options: Any) -> ScenarioSpec:
    """A power-bound scenario from ServeGen client traces (rules: the module docstring).

    ``dirs`` is one folder or several, each holding ``chunk-N-trace.csv`` files directly
    or further down; ``options`` are those of :func:`build_servegen` (``services``,
    ``train_days``, ``curve``, ``topology``, ``quantile``, ``seed``, ...). The result is
    the explicit scenario form: ``topology``'s domains and nodes, one service per chosen
    client with ``replicas``, 8-GPU replicas (the curve's), a priority tier,
    ``nameplateWatts`` and a 144-slot profile. Deterministic for the same inputs. Raises
    ``ValueError`` naming the directory or file and the fix.
    """
    return build_servegen(dirs, **options).spec


def replay_watts(
    dirs: PathLike | Sequence[PathLike],
    names: Sequence[str],
    days: int,
    *,
    curve: PowerCurve,
    sizing: Sizing,
) -> dict[str, list[float]]:
    """Per-replica watts above node idle, window by window, for ``days`` days after
    the training days: ``days × 144`` consecutive 10-minute values per service.

    This is what a replica of each named service would really draw (the trace's rate,
    not a quantile), for checking predictions against what follows them.
    """
    if days < 1:
        raise ValueError(f"servegen: days must be >= 1, got {days}")
    files = trace_files(dirs)
    out: dict[str, list[float]] = {}
    for service in names:
        client = sizing.client(service)
        if service not in files:
            raise ValueError(f"servegen: no trace for {service!r} under the given folders")
        rates = read_rates(files[service], sizing.train_days + days)[sizing.train_days :]
        watts = curve.replica_watts(client.replica_rate(rates.ravel()))
        out[service] = [round(float(w), 1) for w in watts]
    return out
