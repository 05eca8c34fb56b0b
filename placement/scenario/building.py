"""Building the core problem from a scenario file's spec, and the explicit spec back.

:func:`problem_from_spec` checks the cross-references pydantic cannot (one root, known
parents, nodes on leaf domains, unique names, T values per profile and cap schedule,
``current``) and builds the frozen :class:`~placement.problem.Problem`, raising
:class:`~placement.scenario.spec.ScenarioError` with every problem at once, each named by
its path (``services[3].profile: 143 values, the grid has 144 slots``).
:func:`spec_from_problem` writes a problem back in the explicit form.

The file format and its shorthands: docs/scenarios.md.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from placement.fleet import Fleet
from placement.grid import Grid, format_duration
from placement.problem import Problem
from placement.provisioning import provision
from placement.scenario.profiles import profile_values
from placement.scenario.spec import API_VERSION, NodeSpec, ScenarioError, ScenarioSpec
from placement.services import Services
from placement.throughput import (
    DEFAULT_CURVE,
    Provisioning,
    ThroughputCurve,
    check_points,
    parse_limit,
)
from placement.tree import PowerTree


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


def _domain_caps(spec: ScenarioSpec, grid: Grid, problems: list[str]) -> NDArray[np.float64]:
    """The (domains × T) caps in the order of ``spec.domains``; appends to ``problems``
    every duplicate name, unknown or self parent, bad cap and missing or extra root."""
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
    return caps


def _node_specs(spec: ScenarioSpec, problems: list[str]) -> list[tuple[str, NodeSpec]]:
    """Every node, listed or expanded from a node group, with the path to report it by;
    appends to ``problems`` bad groups, duplicate names and nodes off a leaf domain."""
    node_specs: list[tuple[str, NodeSpec]] = [(f"nodes[{i}]", n) for i, n in enumerate(spec.nodes)]
    for i, g in enumerate(spec.node_groups):
        try:
            node_specs += [(f"nodeGroups[{i}]", n) for n in g.expand()]
        except ValueError as exc:
            problems.append(f"nodeGroups[{i}]: {exc}")
    for name in sorted(_duplicates([n.name for _, n in node_specs])):
        problems.append(f"nodes: duplicate node name {name!r}; names must be unique")
    parents = {d.name: d.parent for d in spec.domains}
    known = set(parents)
    leafs = known - {p for p in parents.values() if p is not None}
    for where, n in node_specs:
        if n.domain not in known:
            problems.append(f"{where}.domain: unknown domain {n.domain!r}")
        elif n.domain not in leafs:
            problems.append(
                f"{where}.domain: {n.domain!r} has child domains; attach nodes to leaf domains"
            )
    return node_specs


def _service_profiles(
    spec: ScenarioSpec, grid: Grid, base_dir: Path, problems: list[str]
) -> NDArray[np.float64]:
    """The (services × T) profiles in the order of ``spec.services`` (a row of zeros for
    one that cannot be resolved); appends to ``problems`` duplicate names, bad profiles
    and non-finite nameplates."""
    for name in sorted(_duplicates([s.name for s in spec.services])):
        problems.append(f"services: duplicate service name {name!r}; names must be unique")
    profiles = np.zeros((len(spec.services), grid.slots))
    for i, s in enumerate(spec.services):
        try:
            profiles[i] = profile_values(s.profile, grid, base_dir)
        except ValueError as exc:
            problems.append(f"services[{i}].profile: {exc}")
        if not math.isfinite(s.nameplate_watts):
            problems.append(f"services[{i}].nameplateWatts: must be a finite number of watts")
    return profiles


def _provisioning(
    spec: ScenarioSpec, services: Services, problems: list[str]
) -> Provisioning | None:
    """Per-service power limits and throughput terms, or ``None`` when no service sets
    any; appends to ``problems`` bad limits and curves, each named by its path."""
    fields = ("power_limit", "throughput_curve", "tokens_per_second", "gpu_limit_watts")
    if not any(s.model_fields_set & set(fields) for s in spec.services):
        return None
    own = np.full(services.size, np.nan)
    curves: list[ThroughputCurve] = []
    for i, s in enumerate(spec.services):
        curve = DEFAULT_CURVE
        if s.throughput_curve is not None:
            try:
                check_points(s.throughput_curve, where=f"services[{i}].throughputCurve")
                curve = ThroughputCurve(points=tuple(s.throughput_curve), source="scenario")
            except ValueError as exc:
                problems.append(str(exc))
        curves.append(curve)
        if s.power_limit is None:
            continue
        try:
            own[i] = parse_limit(
                s.power_limit, s.gpu_limit_watts, where=f"services[{i}].powerLimit"
            )
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if own[i] < curve.floor - 1e-9:
            problems.append(
                f"services[{i}].powerLimit: {own[i]:.3g} of the default limit is below the "
                f"throughput curve's floor {curve.floor:.3g} "
                f"({curve.floor * s.gpu_limit_watts:.0f} W); raise it or extend throughputCurve"
            )
    given = [s.tokens_per_second is not None for s in spec.services]
    if any(given) and not all(given):
        missing = given.index(False)
        problems.append(
            f"services[{missing}].tokensPerSecond: give it for every service or for none "
            "(throughput is then in relative units)"
        )
    return Provisioning(
        own=own,
        applied=np.where(np.isnan(own), 1.0, own),
        gpu_watts=np.array([s.gpu_limit_watts for s in spec.services]),
        curves=tuple(curves),
        tokens_per_s=np.array(
            [np.nan if s.tokens_per_second is None else s.tokens_per_second for s in spec.services]
        ),
        base_profiles=services.profiles,
        base_nameplate=services.nameplate,
    )


def _current_replicas(
    spec: ScenarioSpec, services: Services, fleet: Fleet
) -> NDArray[np.int64] | None:
    """The (services × nodes) replicas of ``current:``, or ``None`` without one; raises
    :class:`ScenarioError` listing every unknown service or node and negative count."""
    if not spec.current:
        return None
    problems: list[str] = []
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
    return current


def problem_from_spec(spec: ScenarioSpec, base_dir: Path = Path(".")) -> Problem:
    """Check cross-references and build the core :class:`Problem`.

    Raises :class:`ScenarioError` listing every problem found, not just the first.
    """
    try:
        grid = spec.grid.to_grid()
    except ValueError as exc:
        raise ScenarioError([f"grid: {exc}"]) from exc
    problems: list[str] = []
    caps = _domain_caps(spec, grid, problems)
    node_specs = _node_specs(spec, problems)
    profiles = _service_profiles(spec, grid, base_dir, problems)
    if problems:
        raise ScenarioError(problems, spec.metadata.name)
    try:
        tree = PowerTree.build(
            [d.name for d in spec.domains], [d.parent for d in spec.domains], caps
        )
    except ValueError as exc:
        raise ScenarioError([f"domains: {exc}"], spec.metadata.name) from exc

    fleet = Fleet(
        names=tuple(n.name for _, n in node_specs),
        domain=np.array([tree.index[n.domain] for _, n in node_specs], dtype=np.int64),
        gpus=np.array([n.gpus for _, n in node_specs], dtype=np.int64),
        idle_watts=np.array([n.idle_watts for _, n in node_specs], dtype=np.float64),
    )
    services = Services(
        names=tuple(s.name for s in spec.services),
        demand=np.array([s.replicas for s in spec.services], dtype=np.int64),
        gpus=np.array([s.gpus_per_replica for s in spec.services], dtype=np.int64),
        priority=np.array([s.priority for s in spec.services], dtype=np.int64),
        nameplate=np.array([s.nameplate_watts for s in spec.services], dtype=np.float64),
        profiles=profiles,
    )
    prov = _provisioning(spec, services, problems)
    if problems:
        raise ScenarioError(problems, spec.metadata.name)
    problem = Problem(
        name=spec.metadata.name,
        grid=grid,
        tree=tree,
        fleet=fleet,
        services=services,
        headroom=spec.headroom,
        current=_current_replicas(spec, services, fleet),
    )
    return problem if prov is None else provision(problem, prov)


def spec_from_problem(problem: Problem) -> ScenarioSpec:
    """The explicit form of a problem (every profile as T values)."""
    tree, fleet, svc, grid = problem.tree, problem.fleet, problem.services, problem.grid
    prov = problem.provisioning
    profiles = svc.profiles if prov is None else prov.base_profiles
    nameplate = svc.nameplate if prov is None else prov.base_nameplate

    def limits_of(s: int) -> dict[str, Any]:
        if prov is None:
            return {}
        out: dict[str, Any] = {"gpuLimitWatts": float(prov.gpu_watts[s])}
        if prov.applied[s] < 1.0:
            out["powerLimit"] = float(prov.applied[s])
        if prov.curves[s] != DEFAULT_CURVE:
            out["throughputCurve"] = [list(p) for p in prov.curves[s].points]
        if np.isfinite(prov.tokens_per_s[s]):
            out["tokensPerSecond"] = float(prov.tokens_per_s[s])
        return out

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
                "nameplateWatts": float(nameplate[s]),
                "profile": [round(float(x), 1) for x in profiles[s]],
                **limits_of(s),
            }
            for s in range(svc.size)
        ],
    }
    return ScenarioSpec.model_validate(data)
