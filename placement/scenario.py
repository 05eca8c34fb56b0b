"""Scenario files: the interface the CLI, the e2e harness and the benchmarks share.

A scenario is YAML or JSON, ``apiVersion: powercap.io/v1alpha1``, ``kind: Scenario``.
The explicit form lists every domain, node and service with its profile; on top of it
three shorthands are accepted:

* ``nodeGroups`` — ``{namePrefix, count | countPerDomain, domain | domains, gpus, idleWatts}``;
* parametric profiles — ``profile: {diurnal: {low, high, peakAt, width}}`` or
  ``profile: {constant: W}``;
* CSV profile references — ``profile: {csv: {path, column, timeColumn, quantile, scale}}``,
  the path relative to the scenario file.

Every problem is reported with its path and the fix, e.g.
``services[3].profile: 143 values, the grid has 144 slots``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import yaml
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from placement.fleet import Fleet
from placement.grid import Grid, format_duration, parse_duration
from placement.problem import Problem
from placement.services import Services
from placement.tree import PowerTree
from placement.validation import ProblemsError, validation_problems

API_VERSION = "powercap.io/v1alpha1"


class ScenarioError(ProblemsError):
    """A scenario that cannot be used; ``problems`` lists every ``path: message``."""

    def __init__(self, problems: list[str], source: str = "scenario") -> None:
        super().__init__(problems, source)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Metadata(_Model):
    name: str = "scenario"


class GridSpec(_Model):
    period: str | int = "24h"
    step: str | int = "10m"
    offset: str | int = 0

    def to_grid(self) -> Grid:
        offset = 0 if self.offset in (0, "0", "0s") else parse_duration(self.offset)
        return Grid(parse_duration(self.period), parse_duration(self.step), offset)


class DomainSpec(_Model):
    name: str = Field(min_length=1)
    parent: str | None = None
    cap: float | list[float]


class NodeSpec(_Model):
    name: str = Field(min_length=1)
    domain: str
    gpus: int = Field(ge=0)
    idle_watts: float = Field(alias="idleWatts", ge=0, default=0.0)


class NodeGroupSpec(_Model):
    """``count`` nodes in ``domain``, or ``countPerDomain`` in each of ``domains``.

    Nodes are named ``{namePrefix}-{i:04d}`` with ``i`` counting across the group from 1.
    """

    name_prefix: str = Field(alias="namePrefix", min_length=1)
    domain: str | None = None
    domains: list[str] | None = None
    count: int | None = Field(default=None, ge=0)
    count_per_domain: int | None = Field(alias="countPerDomain", default=None, ge=0)
    gpus: int = Field(ge=0)
    idle_watts: float = Field(alias="idleWatts", ge=0, default=0.0)

    def expand(self) -> list[NodeSpec]:
        if self.domain is not None and self.count is not None:
            targets = [self.domain] * self.count
        elif self.domains is not None and self.count_per_domain is not None:
            targets = [d for d in self.domains for _ in range(self.count_per_domain)]
        else:
            raise ValueError("give either domain and count, or domains and countPerDomain")
        return [
            NodeSpec(
                name=f"{self.name_prefix}-{i:04d}",
                domain=d,
                gpus=self.gpus,
                idle_watts=self.idle_watts,
            )
            for i, d in enumerate(targets, start=1)
        ]


class DiurnalSpec(_Model):
    """A daily bump: ``low`` watts off-peak rising to ``high`` at ``peakAt``.

    ``width`` is the full width at half height of the bump (a wrapped Gaussian).
    """

    low: float = Field(ge=0)
    high: float = Field(ge=0)
    peak_at: str = Field(alias="peakAt")
    width: str | int = "8h"


class CsvProfileSpec(_Model):
    """Watts per replica from a CSV column.

    Without ``timeColumn`` the column holds exactly T values, one per slot. With it,
    rows are a time series (unix seconds or ISO 8601) folded onto the grid, taking
    ``quantile`` of the values that fall in each slot.
    """

    path: str
    column: str
    time_column: str | None = Field(alias="timeColumn", default=None)
    quantile: float = Field(default=0.95, ge=0, le=1)
    scale: float = Field(default=1.0, gt=0)


class ProfileRef(_Model):
    diurnal: DiurnalSpec | None = None
    constant: float | None = None
    csv: CsvProfileSpec | None = None


class ServiceSpec(_Model):
    name: str = Field(min_length=1)
    replicas: int = Field(ge=0)
    gpus_per_replica: int = Field(alias="gpusPerReplica", ge=1, default=1)
    priority: int = 0
    nameplate_watts: float = Field(alias="nameplateWatts", ge=0)
    profile: list[float] | ProfileRef


class ScenarioSpec(_Model):
    """The file, as written."""

    api_version: Literal["powercap.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["Scenario"]
    metadata: Metadata = Metadata()
    grid: GridSpec = GridSpec()
    headroom: float = Field(default=0.0, ge=0, lt=1)
    domains: list[DomainSpec]
    nodes: list[NodeSpec] = []
    node_groups: list[NodeGroupSpec] = Field(alias="nodeGroups", default=[])
    services: list[ServiceSpec] = []
    current: dict[str, dict[str, int]] = {}

    @field_validator("domains")
    @classmethod
    def _some_domain(cls, v: list[DomainSpec]) -> list[DomainSpec]:
        if not v:
            raise ValueError("at least one domain is needed")
        return v

    def to_yaml(self) -> str:
        return yaml.safe_dump(
            self.model_dump(by_alias=True, exclude_defaults=True, mode="json"), sort_keys=False
        )


def _pydantic_problems(err: ValidationError) -> list[str]:
    return validation_problems(err, reference="the scenario reference")


def parse_time_of_day(text: str) -> int:
    """Seconds after midnight of ``HH:MM``."""
    try:
        hh, mm = text.split(":")
        h, m = int(hh), int(mm)
    except ValueError as exc:
        raise ValueError(f"expected a time of day HH:MM, got {text!r}") from exc
    if not (0 <= h < 24 and 0 <= m < 60):
        raise ValueError(f"expected a time of day HH:MM, got {text!r}")
    return h * 3600 + m * 60


def diurnal_profile(spec: DiurnalSpec, grid: Grid) -> NDArray[np.float64]:
    """Sample a wrapped Gaussian bump at the middle of every slot."""
    centre = parse_time_of_day(spec.peak_at)
    fwhm = parse_duration(spec.width)
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    mids = (np.arange(grid.slots) + 0.5) * grid.step_s
    delta = np.abs(mids - centre) % grid.period_s
    delta = np.minimum(delta, grid.period_s - delta)
    shape = np.exp(-0.5 * (delta / sigma) ** 2)
    return spec.low + (spec.high - spec.low) * shape


def _parse_instant(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text).timestamp()


def csv_profile(spec: CsvProfileSpec, grid: Grid, base_dir: Path) -> NDArray[np.float64]:
    """Read a profile from CSV as :class:`CsvProfileSpec` describes."""
    path = Path(spec.path)
    if not path.is_absolute():
        path = base_dir / path
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    if rows and spec.column not in rows[0]:
        raise ValueError(f"{path} has no column {spec.column!r} (columns: {', '.join(rows[0])})")
    try:
        values = np.array([float(r[spec.column]) for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: column {spec.column!r} is not numeric: {exc}") from exc
    if spec.time_column is None:
        return values * spec.scale
    if spec.time_column not in rows[0]:
        raise ValueError(f"{path} has no column {spec.time_column!r}")
    slots = np.array([grid.slot_of(_parse_instant(r[spec.time_column])) for r in rows])
    out = np.full(grid.slots, np.nan)
    for t in range(grid.slots):
        chosen = values[slots == t]
        if chosen.size:
            out[t] = np.quantile(chosen, spec.quantile)
    if np.isnan(out).any():
        missing = grid.slot_label(int(np.flatnonzero(np.isnan(out))[0]))
        raise ValueError(f"{path}: no rows fall in the slot at {missing}")
    return out * spec.scale


def _resolve_profile(
    spec: ServiceSpec, grid: Grid, base_dir: Path
) -> tuple[NDArray[np.float64] | None, str]:
    """The (T,) profile of a service, or ``None`` and why not."""
    prof = spec.profile
    try:
        if isinstance(prof, list):
            values = np.asarray(prof, dtype=np.float64)
        else:
            given = [k for k in ("diurnal", "constant", "csv") if getattr(prof, k) is not None]
            if len(given) != 1:
                return None, "give exactly one of a list of values, diurnal, constant or csv"
            if prof.diurnal is not None:
                values = diurnal_profile(prof.diurnal, grid)
            elif prof.constant is not None:
                values = np.full(grid.slots, float(prof.constant))
            else:
                assert prof.csv is not None
                values = csv_profile(prof.csv, grid, base_dir)
    except ValueError as exc:
        return None, str(exc)
    if values.shape != (grid.slots,):
        return None, f"{values.size} values, the grid has {grid.slots} slots"
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        return None, f"value {bad} is not a finite number of watts"
    if (values < 0).any():
        bad = int(np.flatnonzero(values < 0)[0])
        return None, f"value {bad} is negative ({values[bad]:g} W); watts must be >= 0"
    return values, ""


def _resolve_cap(cap: float | list[float], grid: Grid) -> tuple[NDArray[np.float64] | None, str]:
    arr = np.full(grid.slots, float(cap)) if isinstance(cap, int | float) else np.asarray(cap)
    if arr.shape != (grid.slots,):
        return None, f"{arr.size} values, the grid has {grid.slots} slots (or give one number)"
    if not np.isfinite(arr).all() or (arr <= 0).any():
        return None, "caps must be finite and positive watts"
    return arr.astype(np.float64), ""


def _duplicates(names: list[str]) -> set[str]:
    seen: set[str] = set()
    dup: set[str] = set()
    for n in names:
        (dup if n in seen else seen).add(n)
    return dup


def problem_from_spec(spec: ScenarioSpec, base_dir: Path = Path(".")) -> Problem:
    """Check cross-references and build the core :class:`Problem`.

    Raises :class:`ScenarioError` listing every problem found, not just the first.
    """
    problems: list[str] = []
    try:
        grid = spec.grid.to_grid()
    except ValueError as exc:
        raise ScenarioError([f"grid: {exc}"]) from exc

    names = [d.name for d in spec.domains]
    known = set(names)
    for name in sorted(_duplicates(names)):
        i = names.index(name, names.index(name) + 1)
        problems.append(f"domains[{i}].name: duplicate domain {name!r}; names must be unique")
    caps = np.zeros((len(spec.domains), grid.slots))
    for i, d in enumerate(spec.domains):
        if d.parent is not None and d.parent not in known:
            problems.append(
                f"domains[{i}].parent: unknown domain {d.parent!r}; declare it or drop the parent"
            )
        if d.parent == d.name:
            problems.append(f"domains[{i}].parent: a domain cannot be its own parent")
        arr, why = _resolve_cap(d.cap, grid)
        if arr is None:
            problems.append(f"domains[{i}].cap: {why}")
        else:
            caps[i] = arr
    roots = [d.name for d in spec.domains if d.parent is None]
    if len(roots) > 1:
        problems.append(
            f"domains: {len(roots)} roots ({', '.join(roots[:4])}); "
            "give every domain but one a parent"
        )
    if not roots and not problems:
        problems.append("domains: no root domain (every domain has a parent): there is a cycle")

    node_specs: list[tuple[str, NodeSpec]] = [(f"nodes[{i}]", n) for i, n in enumerate(spec.nodes)]
    for i, g in enumerate(spec.node_groups):
        try:
            node_specs += [(f"nodeGroups[{i}]", n) for n in g.expand()]
        except ValueError as exc:
            problems.append(f"nodeGroups[{i}]: {exc}")
    node_names = [n.name for _, n in node_specs]
    for name in sorted(_duplicates(node_names)):
        problems.append(f"nodes: duplicate node name {name!r}; names must be unique")
    parents = {d.name: d.parent for d in spec.domains}
    leafs = known - {p for p in parents.values() if p is not None}
    for where, n in node_specs:
        if n.domain not in known:
            problems.append(f"{where}.domain: unknown domain {n.domain!r}")
        elif n.domain not in leafs:
            problems.append(
                f"{where}.domain: {n.domain!r} has child domains; attach nodes to leaf domains"
            )

    svc_names = [s.name for s in spec.services]
    for name in sorted(_duplicates(svc_names)):
        problems.append(f"services: duplicate service name {name!r}; names must be unique")
    profiles = np.zeros((len(spec.services), grid.slots))
    for i, s in enumerate(spec.services):
        values, why = _resolve_profile(s, grid, base_dir)
        if values is None:
            problems.append(f"services[{i}].profile: {why}")
        else:
            profiles[i] = values
        if not math.isfinite(s.nameplate_watts):
            problems.append(f"services[{i}].nameplateWatts: must be a finite number of watts")

    if problems:
        raise ScenarioError(problems, spec.metadata.name)
    try:
        tree = PowerTree.build(names, [d.parent for d in spec.domains], caps)
    except ValueError as exc:
        raise ScenarioError([f"domains: {exc}"], spec.metadata.name) from exc

    fleet = Fleet(
        names=tuple(node_names),
        domain=np.array([tree.index[n.domain] for _, n in node_specs], dtype=np.int64),
        gpus=np.array([n.gpus for _, n in node_specs], dtype=np.int64),
        idle_watts=np.array([n.idle_watts for _, n in node_specs], dtype=np.float64),
    )
    services = Services(
        names=tuple(svc_names),
        demand=np.array([s.replicas for s in spec.services], dtype=np.int64),
        gpus=np.array([s.gpus_per_replica for s in spec.services], dtype=np.int64),
        priority=np.array([s.priority for s in spec.services], dtype=np.int64),
        nameplate=np.array([s.nameplate_watts for s in spec.services], dtype=np.float64),
        profiles=profiles,
    )
    current = None
    if spec.current:
        current = np.zeros((services.size, fleet.size), dtype=np.int64)
        for svc, per_node in spec.current.items():
            if svc not in services.index:
                problems.append(f"current.{svc}: unknown service")
                continue
            for node, count in per_node.items():
                if node not in fleet.index:
                    problems.append(f"current.{svc}.{node}: unknown node")
                elif count < 0:
                    problems.append(f"current.{svc}.{node}: replicas must be >= 0")
                else:
                    current[services.index[svc], fleet.index[node]] = count
        if problems:
            raise ScenarioError(problems, spec.metadata.name)
    return Problem(
        name=spec.metadata.name,
        grid=grid,
        tree=tree,
        fleet=fleet,
        services=services,
        headroom=spec.headroom,
        current=current,
    )


def spec_from_data(data: Any, source: str = "scenario") -> ScenarioSpec:
    """Validate already-parsed YAML/JSON; raises :class:`ScenarioError`."""
    if not isinstance(data, Mapping):
        raise ScenarioError(["(top level): expected a mapping with apiVersion, kind, ..."], source)
    try:
        return ScenarioSpec.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_pydantic_problems(exc), source) from exc


def read_spec(path: Path) -> ScenarioSpec:
    """Parse a YAML or JSON scenario file."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ScenarioError([f"cannot read file: {exc.strerror}"], str(path)) from exc
    try:
        data = orjson.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise ScenarioError([f"not valid YAML/JSON: {exc}"], str(path)) from exc
    return spec_from_data(data, str(path))


def load_problem(path: Path) -> Problem:
    """Read, validate and build the problem of a scenario file."""
    spec = read_spec(path)
    try:
        return problem_from_spec(spec, path.parent)
    except ScenarioError as exc:
        raise ScenarioError(exc.problems, str(path)) from exc


def spec_from_problem(problem: Problem) -> ScenarioSpec:
    """The explicit form of a problem (every profile as T values)."""
    tree, fleet, svc, grid = problem.tree, problem.fleet, problem.services, problem.grid

    def cap_of(d: int) -> float | list[float]:
        row = tree.caps[d]
        return float(row[0]) if np.all(row == row[0]) else [round(float(x), 3) for x in row]

    data: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "Scenario",
        "metadata": {"name": problem.name},
        "grid": {
            "period": format_duration(grid.period_s),
            "step": format_duration(grid.step_s),
            "offset": grid.offset_s,
        },
        "headroom": problem.headroom,
        "domains": [
            {
                "name": tree.names[d],
                **({"parent": tree.names[tree.parents[d]]} if tree.parents[d] >= 0 else {}),
                "cap": cap_of(d),
            }
            for d in range(tree.size)
        ],
        "nodes": [
            {
                "name": fleet.names[n],
                "domain": tree.names[fleet.domain[n]],
                "gpus": int(fleet.gpus[n]),
                "idleWatts": float(fleet.idle_watts[n]),
            }
            for n in range(fleet.size)
        ],
        "services": [
            {
                "name": svc.names[s],
                "replicas": int(svc.demand[s]),
                "gpusPerReplica": int(svc.gpus[s]),
                "priority": int(svc.priority[s]),
                "nameplateWatts": float(svc.nameplate[s]),
                "profile": [round(float(x), 1) for x in svc.profiles[s]],
            }
            for s in range(svc.size)
        ],
    }
    return ScenarioSpec.model_validate(data)
