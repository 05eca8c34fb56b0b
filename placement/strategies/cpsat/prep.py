"""Preparation: the problem as integer numpy arrays in model units, with the bounds
every later step relies on (per-host and per-domain variable bounds, live slots)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from placement.fleet import Fleet
from placement.metrics import priority_weights
from placement.problem import Problem
from placement.tree import PowerTree

WATT_SCALE = 1000
"""Model units per watt (milliwatts). Profiles are rounded up and allowances down to
this resolution, so the integer model is never more permissive than the float check and
loses at most one milliwatt per replica against it."""

EMISSION_SCALE = 1_000_000
"""Model units per kg CO2e (milligrams): per-replica emissions are rounded up and the
budget down to this resolution, like the watts."""

PERMILLE = 1000
INT = np.int64
BIG = np.iinfo(np.int64).max // 8  # "no bound"; a few of them still add up without overflow

IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]
SizeCaps = tuple[tuple[int, IntArray, IntArray], ...]
"""Per distinct replica size ``k``: (k, count cap (H,), GPU cap (H,))."""


@dataclass(frozen=True)
class Prep:
    """Everything the model needs, as integer numpy arrays in model units."""

    hosts: IntArray  # domain index of every host domain (one with nodes attached)
    host_of_node: IntArray  # position in ``hosts`` of every node's domain
    up: BoolArray  # (H × D): d is h's domain or one of its ancestors
    up_int: IntArray  # the same as 0/1 integers, for sums over hosts
    paths: tuple[IntArray, ...]  # per host: its domain and every domain above it
    weights: IntArray  # (S,) priority weights
    gpus: IntArray  # (S,) GPUs per replica
    demand: IntArray  # (S,)
    pk: IntArray  # (S × T) profile, rounded up
    rhs: IntArray  # (D × T) capEff − idle, rounded down
    cap_u: IntArray  # (D × T) capEff, rounded down, ≥ 1 (utilisation denominators)
    idle_u: IntArray  # (D,) idle, rounded up
    dead: BoolArray  # (D,) idle alone exceeds the cap in some slot
    ub_host: IntArray  # (S × H)
    ub_dom: IntArray  # (S × D)
    live: BoolArray  # (D × T) the constraint can bind at all
    potential: NDArray[np.float64]  # (D × T) an upper bound of the load above idle
    sizes: SizeCaps
    util_domains: BoolArray  # (D,) domains the peak-utilisation objective looks at
    em: IntArray  # (S × H) emissions of one replica per host over the window, rounded up
    em_in: BoolArray  # (H,) hosts under the budgeted domain
    em_budget: int | None  # budget above the domain's idle floor, rounded down

    @property
    def slots(self) -> int:
        return int(self.pk.shape[1])


def prepare(problem: Problem) -> Prep:
    """The model inputs of ``problem``; a dead domain (idle alone over its cap in some
    slot) and everything under it get no replica."""
    tree, fleet, svc = problem.tree, problem.fleet, problem.services
    hosts = np.unique(fleet.domain).astype(INT)
    host_pos = np.full(tree.size, -1, dtype=INT)
    host_pos[hosts] = np.arange(hosts.size)
    host_of_node = host_pos[fleet.domain]
    up = tree.membership[:, hosts].T.copy()  # (H × D)
    up_int = up.astype(INT)

    caps = problem.effective_caps
    idle = problem.idle_by_domain
    pk = np.ceil(np.clip(svc.profiles, 0.0, None) * WATT_SCALE).astype(INT)
    rhs = np.floor((caps - idle[:, None]) * WATT_SCALE).astype(INT)
    dead_here: BoolArray = np.asarray((rhs < 0).any(axis=1), dtype=bool)
    # A domain is dead if it or any ancestor is: nothing may be placed under it.
    dead: BoolArray = np.asarray((tree.membership & dead_here[:, None]).any(axis=0), dtype=bool)

    demand = np.clip(svc.demand, 0, None).astype(INT)
    gpus = np.clip(svc.gpus, 0, None).astype(INT)
    sizes, gpu_ub = _size_caps(fleet, gpus, hosts.size, host_of_node)
    ub_power = _power_bounds(pk, rhs, dead)
    em, em_in, em_budget = _emission_terms(problem, hosts, up)
    ub_host = _host_bounds(
        tree,
        hosts,
        gpu_ub=gpu_ub,
        ub_power=ub_power,
        demand=demand,
        emissions=(em, em_in, em_budget),
    )
    ub_dom = np.minimum(ub_host @ up_int, np.minimum(ub_power, demand[:, None]))

    potential = _potential_load(ub_dom, pk, gpus, up, fleet.gpus, host_of_node)
    live = (potential > rhs) & (ub_dom.sum(axis=0) > 0)[:, None]

    has_vars = ub_dom.sum(axis=0) > 0
    util_domains = has_vars & (tree.parents >= 0)
    if not util_domains.any():
        util_domains = has_vars
    return Prep(
        hosts=hosts,
        host_of_node=host_of_node,
        up=up,
        up_int=up_int,
        paths=tuple(np.flatnonzero(row) for row in up),
        weights=priority_weights(svc.priority).astype(INT),
        gpus=gpus,
        demand=demand,
        pk=pk,
        rhs=rhs,
        cap_u=np.maximum(np.floor(caps * WATT_SCALE).astype(INT), 1),
        idle_u=np.ceil(idle * WATT_SCALE).astype(INT),
        dead=dead,
        ub_host=ub_host,
        ub_dom=ub_dom,
        live=live,
        potential=potential,
        sizes=sizes,
        util_domains=util_domains,
        em=em,
        em_in=em_in,
        em_budget=em_budget,
    )


def _size_caps(
    fleet: Fleet, gpus: IntArray, n_hosts: int, host_of_node: IntArray
) -> tuple[SizeCaps, IntArray]:
    """GPU capacity per host domain for every distinct replica size, and (S × H) how
    many replicas of each service the GPUs alone admit per host."""
    size_list: list[tuple[int, IntArray, IntArray]] = []
    count_by_size: dict[int, IntArray] = {}
    for k in sorted({int(g) for g in gpus if g >= 1}):
        cnt = np.zeros(n_hosts, dtype=INT)
        np.add.at(cnt, host_of_node, fleet.gpus // k)
        wcap = np.zeros(n_hosts, dtype=INT)
        np.add.at(wcap, host_of_node, np.where(fleet.gpus >= k, fleet.gpus, 0))
        size_list.append((k, cnt, wcap))
        count_by_size[k] = cnt
    gpu_ub = np.empty((gpus.size, n_hosts), dtype=INT)
    for s in range(gpus.size):
        g = int(gpus[s])
        gpu_ub[s] = count_by_size[g] if g >= 1 else BIG
    return tuple(size_list), gpu_ub


def _power_bounds(pk: IntArray, rhs: IntArray, dead: BoolArray) -> IntArray:
    """(S × D) power alone bounds a service in a domain: p_s(t)·y ≤ rhs(d, t) for every
    slot; nothing under a dead domain."""
    ub_power = np.full((pk.shape[0], rhs.shape[0]), BIG, dtype=INT)
    safe_rhs = np.maximum(rhs, 0)
    for s in range(pk.shape[0]):
        hot = pk[s] > 0
        if hot.any():
            ub_power[s] = (safe_rhs[:, hot] // pk[s, hot]).min(axis=1)
    ub_power[:, dead] = 0
    return ub_power


def _host_bounds(
    tree: PowerTree,
    hosts: IntArray,
    *,
    gpu_ub: IntArray,
    ub_power: IntArray,
    demand: IntArray,
    emissions: tuple[IntArray, BoolArray, int | None],
) -> IntArray:
    """(S × H) the most replicas of a service one host can take: its GPUs, the power
    bound of every domain above it, demand and the emission budget (``emissions`` as
    :func:`_emission_terms` returns them)."""
    em, em_in, em_budget = emissions
    # A host inherits the power bound of every domain above it (parents come first).
    ub_down = ub_power.copy()
    for d in range(tree.size):
        p = int(tree.parents[d])
        if p >= 0:
            ub_down[:, d] = np.minimum(ub_down[:, d], ub_down[:, p])
    ub_path = ub_down[:, hosts]
    ub_host = np.minimum(np.minimum(gpu_ub, ub_path), demand[:, None])
    if em_budget is not None:  # the budget alone bounds a service under it
        ub_em = np.where(em > 0, em_budget // np.maximum(em, 1), BIG)
        ub_host = np.where(em_in[None, :], np.minimum(ub_host, ub_em), ub_host)
    return np.maximum(ub_host, 0)


def _emission_terms(
    problem: Problem, hosts: IntArray, up: BoolArray
) -> tuple[IntArray, BoolArray, int | None]:
    """Per-replica emissions per host in model units, the hosts the budget covers and
    the budget above idle (``None`` without one); zeros without carbon terms."""
    from placement.carbon.emissions import budget_allowance, replica_kg

    em = np.ceil(replica_kg(problem)[:, hosts] * EMISSION_SCALE).astype(INT)
    budget = budget_allowance(problem)
    if budget is None:
        return em, np.zeros(hosts.size, dtype=bool), None
    d, allowance_kg = budget
    return em, up[:, d].copy(), math.floor(allowance_kg * EMISSION_SCALE)


def _potential_load(
    ub_dom: IntArray,
    pk: IntArray,
    gpus: IntArray,
    up: BoolArray,
    node_gpus: IntArray,
    host_of_node: IntArray,
) -> NDArray[np.float64]:
    """(D × T) upper bound of the load above idle any placement can put on a domain:
    a fractional knapsack of its GPUs, densest watts-per-GPU first, per slot."""
    n_dom = ub_dom.shape[1]
    slots = pk.shape[1]
    host_gpus = np.zeros(up.shape[0], dtype=np.float64)
    np.add.at(host_gpus, host_of_node, node_gpus.astype(np.float64))
    dom_gpus = host_gpus @ up.astype(np.float64)  # (D,)
    out = np.zeros((n_dom, slots), dtype=np.float64)
    free = gpus == 0  # GPU-less replicas are bounded by their count only
    if free.any():
        out += ub_dom[free].T.astype(np.float64) @ pk[free].astype(np.float64)
    sized = np.flatnonzero(~free)
    if sized.size == 0:
        return out
    g = gpus[sized].astype(np.float64)
    density = pk[sized].astype(np.float64) / g[:, None]  # (S' × T)
    order = np.argsort(-density, axis=0, kind="stable")  # per slot
    item_gpus = ub_dom[sized].astype(np.float64) * g[:, None]  # (S' × D)
    for t in range(slots):  # T small vectorised (S' × D) steps
        o = order[:, t]
        ig = item_gpus[o]
        before = np.cumsum(ig, axis=0) - ig
        take = np.clip(dom_gpus[None, :] - before, 0.0, ig)
        out[:, t] += density[o, t] @ take
    return out
