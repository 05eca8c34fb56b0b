"""``cpsat``: the placement a global optimiser finds, with OR-Tools CP-SAT.

:func:`plan_cpsat` is the entry point (``run_strategy("cpsat", problem, ...)`` calls it).
It returns a :class:`~placement.strategies.Plan` with no predicted violation at any level
of the tree in any slot (except under a domain whose idle draw alone exceeds its cap,
named in ``stats.extra["idle_over_cap"]``), and never with fewer priority-weighted
replicas than ``greedy`` (``stats.extra["fallback"]`` says when greedy's answer is
returned). The bound and gap it reports are stage 1's.

The model (counts per host domain, GPU and power rows, the emission budget row), the lazy
slot generation, the lexicographic stages and how the time limit is shared between them
are described in docs/planner.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from ortools.linear_solver import pywraplp
from ortools.sat.python import cp_model

from placement.admission import violations
from placement.assignment import Assignment
from placement.metrics import priority_weights
from placement.problem import Problem
from placement.strategies import Plan, SolverStats

WATT_SCALE = 1000
"""Model units per watt (milliwatts). Profiles are rounded up and allowances down to
this resolution, so the integer model is never more permissive than the float check and
loses at most one milliwatt per replica against it."""

EMISSION_SCALE = 1_000_000
"""Model units per kg CO2e (milligrams): per-replica emissions are rounded up and the
budget down to this resolution, like the watts."""

PERMILLE = 1000
# Slots added per violated domain in one round, and how far apart (in hours) they must be:
# neighbouring slots of a smooth profile are fixed together by the worst one.
_SLOTS_PER_ROUND = 8
_SLOT_SPACING_H = 0.5
_MAX_SERVICE_PEAK_SLOTS = 4
# After the LP converges, slots where its load is within this fraction of the cap are
# emitted too.
_NEAR_BINDING = 0.02
_INT = np.int64
_BIG = np.iinfo(np.int64).max // 8

IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


# --------------------------------------------------------------------------- preparation


@dataclass(frozen=True)
class _Prep:
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
    sizes: tuple[tuple[int, IntArray, IntArray], ...]  # (k, count cap (H,), GPU cap (H,))
    util_domains: BoolArray  # (D,) domains the peak-utilisation objective looks at
    em: IntArray  # (S × H) emissions of one replica per host over the window, rounded up
    em_in: BoolArray  # (H,) hosts under the budgeted domain
    em_budget: int | None  # budget above the domain's idle floor, rounded down

    @property
    def slots(self) -> int:
        return int(self.pk.shape[1])


def _prepare(problem: Problem) -> _Prep:
    tree, fleet, svc = problem.tree, problem.fleet, problem.services
    n_dom, n_svc = tree.size, svc.size
    hosts = np.unique(fleet.domain).astype(_INT)
    host_pos = np.full(n_dom, -1, dtype=_INT)
    host_pos[hosts] = np.arange(hosts.size)
    host_of_node = host_pos[fleet.domain]
    up = tree.membership[:, hosts].T.copy()  # (H × D)
    up_int = up.astype(_INT)

    caps = problem.effective_caps
    idle = problem.idle_by_domain
    pk = np.ceil(np.clip(svc.profiles, 0.0, None) * WATT_SCALE).astype(_INT)
    rhs = np.floor((caps - idle[:, None]) * WATT_SCALE).astype(_INT)
    cap_u = np.maximum(np.floor(caps * WATT_SCALE).astype(_INT), 1)
    idle_u = np.ceil(idle * WATT_SCALE).astype(_INT)
    dead_here: BoolArray = np.asarray((rhs < 0).any(axis=1), dtype=bool)
    # A domain is dead if it or any ancestor is: nothing may be placed under it.
    dead: BoolArray = np.asarray((tree.membership & dead_here[:, None]).any(axis=0), dtype=bool)

    demand = np.clip(svc.demand, 0, None).astype(_INT)
    gpus = np.clip(svc.gpus, 0, None).astype(_INT)

    # GPU capacity per host domain for every distinct replica size.
    size_list: list[tuple[int, IntArray, IntArray]] = []
    count_by_size: dict[int, IntArray] = {}
    for k in sorted({int(g) for g in gpus if g >= 1}):
        cnt = np.zeros(hosts.size, dtype=_INT)
        np.add.at(cnt, host_of_node, fleet.gpus // k)
        wcap = np.zeros(hosts.size, dtype=_INT)
        np.add.at(wcap, host_of_node, np.where(fleet.gpus >= k, fleet.gpus, 0))
        size_list.append((k, cnt, wcap))
        count_by_size[k] = cnt
    gpu_ub = np.empty((n_svc, hosts.size), dtype=_INT)
    for s in range(n_svc):
        g = int(gpus[s])
        gpu_ub[s] = count_by_size[g] if g >= 1 else _BIG

    # Power alone bounds a service in a domain: p_s(t)·y ≤ rhs(d, t) for every slot.
    ub_power = np.full((n_svc, n_dom), _BIG, dtype=_INT)
    safe_rhs = np.maximum(rhs, 0)
    for s in range(n_svc):
        hot = pk[s] > 0
        if hot.any():
            ub_power[s] = (safe_rhs[:, hot] // pk[s, hot]).min(axis=1)
    ub_power[:, dead] = 0
    # A host inherits the power bound of every domain above it (parents come first).
    ub_down = ub_power.copy()
    for d in range(n_dom):
        p = int(tree.parents[d])
        if p >= 0:
            ub_down[:, d] = np.minimum(ub_down[:, d], ub_down[:, p])
    ub_path = ub_down[:, hosts]
    ub_host = np.minimum(np.minimum(gpu_ub, ub_path), demand[:, None])
    em, em_in, em_budget = _emission_terms(problem, hosts, up)
    if em_budget is not None:  # the budget alone bounds a service under it
        ub_em = np.where(em > 0, em_budget // np.maximum(em, 1), _BIG)
        ub_host = np.where(em_in[None, :], np.minimum(ub_host, ub_em), ub_host)
    ub_host = np.maximum(ub_host, 0)
    ub_dom = np.minimum(ub_host @ up_int, np.minimum(ub_power, demand[:, None]))

    potential = _potential_load(ub_dom, pk, gpus, up, fleet.gpus, host_of_node)
    live = (potential > rhs) & (ub_dom.sum(axis=0) > 0)[:, None]

    has_vars = ub_dom.sum(axis=0) > 0
    util_domains = has_vars & (tree.parents >= 0)
    if not util_domains.any():
        util_domains = has_vars
    return _Prep(
        hosts=hosts,
        host_of_node=host_of_node,
        up=up,
        up_int=up_int,
        paths=tuple(np.flatnonzero(row) for row in up),
        weights=priority_weights(svc.priority).astype(_INT),
        gpus=gpus,
        demand=demand,
        pk=pk,
        rhs=rhs,
        cap_u=cap_u,
        idle_u=idle_u,
        dead=dead,
        ub_host=ub_host,
        ub_dom=ub_dom,
        live=live,
        potential=potential,
        sizes=tuple(size_list),
        util_domains=util_domains,
        em=em,
        em_in=em_in,
        em_budget=em_budget,
    )


def _emission_terms(
    problem: Problem, hosts: IntArray, up: BoolArray
) -> tuple[IntArray, BoolArray, int | None]:
    """Per-replica emissions per host in model units, the hosts the budget covers and
    the budget above idle (``None`` without one); zeros without carbon terms."""
    from placement.carbon.emissions import budget_allowance, replica_kg

    em = np.ceil(replica_kg(problem)[:, hosts] * EMISSION_SCALE).astype(_INT)
    budget = budget_allowance(problem)
    if budget is None:
        return em, np.zeros(hosts.size, dtype=bool), None
    d, allowance_kg = budget
    return em, up[:, d].copy(), math.floor(allowance_kg * EMISSION_SCALE)


def _emitted(prep: _Prep, x: IntArray) -> int:
    """Model-unit emissions of per-host counts ``x``, every host."""
    return int((prep.em * x).sum())


def _budget_left(prep: _Prep, x: IntArray) -> int:
    """Model units of budget still free under ``x`` (negative: over); huge without one."""
    if prep.em_budget is None:
        return int(_BIG)
    return prep.em_budget - int((prep.em[:, prep.em_in] * x[:, prep.em_in]).sum())


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


# ------------------------------------------------------------------ numpy model checks


def _load(prep: _Prep, x: IntArray) -> IntArray:
    """(D × T) model-unit load above idle of per-host counts ``x`` (S × H)."""
    y = x @ prep.up_int  # (S × D)
    return y.T @ prep.pk


def _power_excess(prep: _Prep, x: IntArray) -> IntArray:
    """(D × T) load minus allowance; > 0 is a violation. Dead domains never count."""
    excess = _load(prep, x) - prep.rhs
    excess[prep.dead] = np.minimum(excess[prep.dead], 0)
    return excess


def _util_permille(prep: _Prep, load: IntArray) -> IntArray:
    """(D × T) utilisation of capEff in per-mille, rounded up; 0 outside util domains."""
    num = PERMILLE * (prep.idle_u[:, None] + load)
    util = -(-num // prep.cap_u)
    util[~prep.util_domains] = 0
    return util


def _moves(x: IntArray, current: IntArray | None) -> int:
    if current is None:
        return 0
    return int(np.clip(current - x, 0, None).sum())


def _value(prep: _Prep, x: IntArray) -> int:
    return int(prep.weights @ x.sum(axis=1)) if x.size else 0


def _pick_slots(excess: NDArray[Any], spacing: int, limit: int) -> list[int]:
    """The worst violated slots of one domain, at least ``spacing`` slots apart (cyclic)."""
    slots = excess.shape[0]
    picked: list[int] = []
    for t in np.argsort(-excess, kind="stable"):
        if excess[t] <= 0 or len(picked) >= limit:
            break
        if all(min(abs(int(t) - p), slots - abs(int(t) - p)) >= spacing for p in picked):
            picked.append(int(t))
    return picked


def _make_feasible(prep: _Prep, x_in: IntArray) -> IntArray:
    """A feasible placement near ``x``: drop what violates, then fill what still fits."""
    return _fill(prep, _drop_to_feasible(prep, x_in))


def _fill(prep: _Prep, x_in: IntArray) -> IntArray:
    """Add replicas to a feasible ``x`` while they fit every slot, GPU and demand limit.

    Services go in order of weight, then of mean watts (more replicas per watt first);
    each goes to the hosts with the most room first.
    """
    x = x_in.copy()
    excess = _power_excess(prep, x)
    excess[prep.dead] = np.maximum(excess[prep.dead], 1)  # nothing goes under a dead domain
    left = _budget_left(prep, x)
    order = np.lexsort((prep.pk.mean(axis=1), -prep.weights))
    for s in order:
        want = int(prep.demand[s] - x[s].sum())
        if want <= 0:
            continue
        hot = np.flatnonzero(prep.pk[s] > 0)
        room = _room(prep, x, excess, int(s), left)
        for h in np.argsort(-room, kind="stable"):
            if want == 0 or room[h] <= 0:
                break
            k_fit = int(room[h])
            if hot.size:  # ancestors may have lost room to earlier hosts
                path = prep.paths[h]
                k_fit = min(k_fit, int((-excess[np.ix_(path, hot)] // prep.pk[s, hot]).min()))
            cost = int(prep.em[s, h]) if prep.em_in[h] else 0
            if cost > 0:  # earlier hosts may have used budget too
                k_fit = min(k_fit, left // cost)
            add = min(k_fit, want)
            if add > 0:
                _shift(prep, x, excess, int(s), int(h), add)
                want -= add
                left -= add * cost
    return x


def _drop_to_feasible(prep: _Prep, x_in: IntArray) -> IntArray:
    """Make ``x`` satisfy demand, GPUs and power in every slot.

    Demand and GPU excesses are trimmed (lightest replicas first). Power is fixed at the
    worst (domain, slot) first: a replica drawing power there moves to a host outside
    the domain with room on every slot if there is one, otherwise the replica with the
    least weight per watt in that slot is dropped. Then, over an emission budget,
    replicas under the budgeted domain are dropped, least weight per emission first
    (a drop never adds power, so the power fix holds).
    """
    x = np.clip(x_in, 0, None).astype(_INT)
    x = np.minimum(x, prep.ub_host)
    # Demand: trim the biggest host counts first.
    for s in np.flatnonzero(x.sum(axis=1) > prep.demand):
        extra = int(x[s].sum() - prep.demand[s])
        for h in np.argsort(-x[s], kind="stable"):
            take = min(extra, int(x[s, h]))
            x[s, h] -= take
            extra -= take
            if extra == 0:
                break
    # GPUs: per host and size, drop the lightest replicas first.
    for k, cnt, wcap in prep.sizes:
        members = np.flatnonzero(prep.gpus >= k)
        order = members[np.argsort(prep.weights[members], kind="stable")]
        for h in range(x.shape[1]):
            while x[members, h].sum() > cnt[h] or prep.gpus[members] @ x[members, h] > wcap[h]:
                lightest = next(int(i) for i in order if x[i, h] > 0)
                x[lightest, h] -= 1
    # Power: fix the worst (domain, slot) until none is left.
    excess = _power_excess(prep, x)
    while True:
        flat = int(np.argmax(excess))
        d, t = divmod(flat, excess.shape[1])
        over = int(excess[d, t])
        if over <= 0:
            return _drop_to_budget(prep, x)
        under = prep.up[:, d]
        present = (x[:, under] > 0).any(axis=1) & (prep.pk[:, t] > 0)
        cand = np.flatnonzero(present)
        # Move a replica out of the domain if one fits elsewhere on every slot (the
        # biggest draw in this slot first): a move keeps the objective, a drop does not.
        moved = False
        for victim in cand[np.argsort(-prep.pk[cand, t], kind="stable")]:
            room = _room(prep, x, excess, int(victim))
            room[under] = 0
            dest = int(np.argmax(room))
            if room[dest] > 0:
                source = _fullest_host(prep, x, int(victim), under)
                _shift(prep, x, excess, int(victim), source, -1)
                _shift(prep, x, excess, int(victim), dest, 1)
                moved = True
                break
        if moved:
            continue
        # Otherwise drop: least weight per watt relieved goes first.
        victim = int(cand[np.argmin(prep.weights[cand] / prep.pk[cand, t])])
        source = _fullest_host(prep, x, victim, under)
        need = -(-over // int(prep.pk[victim, t]))
        _shift(prep, x, excess, victim, source, -min(need, int(x[victim, source])))


def _drop_to_budget(prep: _Prep, x: IntArray) -> IntArray:
    over = -_budget_left(prep, x)
    while over > 0:
        cost = np.where(prep.em_in[None, :] & (x > 0), prep.em, 0)
        s_idx, h_idx = np.nonzero(cost)
        if s_idx.size == 0:
            break
        pick = int(np.argmin(prep.weights[s_idx] / cost[s_idx, h_idx]))
        s, h = int(s_idx[pick]), int(h_idx[pick])
        take = min(int(x[s, h]), -(-over // int(cost[s, h])))
        x[s, h] -= take
        over -= take * int(cost[s, h])
    return x


def _fullest_host(prep: _Prep, x: IntArray, s: int, among: BoolArray) -> int:
    """The host in ``among`` with the most replicas of ``s``."""
    return int(np.argmax(np.where(among, x[s], -1)))


def _shift(prep: _Prep, x: IntArray, excess: IntArray, s: int, h: int, k: int) -> None:
    """Add ``k`` (negative: remove) replicas of ``s`` to host ``h``, updating ``excess``."""
    x[s, h] += k
    excess[prep.paths[h]] += k * prep.pk[s]


def _room(prep: _Prep, x: IntArray, excess: IntArray, s: int, left: int | None = None) -> IntArray:
    """(H,) how many more replicas of ``s`` each host takes: power on every slot of
    its path (``excess`` = load − allowance), GPUs, the host bound and the emission
    budget still ``left`` (computed from ``x`` when not given); demand aside."""
    g = int(prep.gpus[s])
    room = prep.ub_host[s] - x[s]
    for k, cnt, wcap in prep.sizes:
        if k <= g:
            sel = prep.gpus >= k
            room = np.minimum(room, cnt - x[sel].sum(axis=0))
            room = np.minimum(room, (wcap - prep.gpus[sel] @ x[sel]) // g)
    hot = np.flatnonzero(prep.pk[s] > 0)
    if hot.size:
        per_dom = (-excess[:, hot] // prep.pk[s, hot]).min(axis=1)
        per_dom[prep.dead] = -1
        room = np.minimum(room, np.where(prep.up, per_dom[None, :], _BIG).min(axis=1))
    if prep.em_budget is not None:
        budget = max(0, _budget_left(prep, x) if left is None else left)
        by_budget = budget // np.maximum(prep.em[s], 1)
        room = np.where(prep.em_in & (prep.em[s] > 0), np.minimum(room, by_budget), room)
    return np.asarray(room, dtype=_INT)


# ------------------------------------------------------------------------- the CP model


@dataclass(frozen=True)
class _Structure:
    """The static part of the model in index form, shared by the CP-SAT model and the
    LP relaxation. Variables ``0 .. len(x_s) - 1`` are ``x[x_s[i], x_h[i]]``; the rest
    are ``y`` sums over child domains (a domain with a single child term reuses it)."""

    x_s: IntArray
    x_h: IntArray
    ub: IntArray  # per variable
    y_var: IntArray  # the y variables that are new, with their (service, domain)
    y_s: IntArray
    y_d: IntArray
    y_children: tuple[tuple[int, ...], ...]
    dom_svc: tuple[IntArray, ...]  # per domain: services with a variable ...
    dom_var: tuple[IntArray, ...]  # ... and the variable of each
    obj_var: IntArray  # root variables, weighted by their service's weight
    obj_w: IntArray
    rows: tuple[tuple[IntArray, IntArray, int], ...]  # static Σ coeff·var ≤ rhs rows

    @property
    def size(self) -> int:
        return int(self.ub.size)

    def values(self, prep: _Prep, x: IntArray) -> IntArray:
        """Every variable's value for per-host counts ``x``."""
        out = np.empty(self.size, dtype=_INT)
        out[: self.x_s.size] = x[self.x_s, self.x_h]
        if self.y_var.size:
            y = x @ prep.up_int
            out[self.y_var] = y[self.y_s, self.y_d]
        return out

    def counts(self, prep: _Prep, values: NDArray[Any]) -> NDArray[Any]:
        """Per-host counts (S × H) from variable values (integers or LP floats)."""
        x = np.zeros(prep.ub_host.shape, dtype=values.dtype)
        x[self.x_s, self.x_h] = values[: self.x_s.size]
        return x


def _structure(prep: _Prep, parents: IntArray) -> _Structure:
    n_dom = parents.size
    x_s, x_h = (a.astype(_INT) for a in np.nonzero(prep.ub_host))
    ub: list[int] = prep.ub_host[x_s, x_h].tolist()
    dom_terms: list[dict[int, list[int]]] = [{} for _ in range(n_dom)]
    for i, (s, h) in enumerate(zip(x_s.tolist(), x_h.tolist(), strict=True)):
        dom_terms[int(prep.hosts[h])].setdefault(s, []).append(i)
    var_of: dict[tuple[int, int], int] = {}
    y_defs: list[tuple[int, int, int, tuple[int, ...]]] = []
    # Parents precede children in the tree, so walking it backwards sees children first.
    for d in range(n_dom - 1, -1, -1):
        for s, terms in dom_terms[d].items():
            cap = int(prep.ub_dom[s, d])
            if len(terms) == 1:
                v = terms[0]
                # Keep the reused variable within this domain's own bound (its power
                # bound): the live-slot pruning relies on every y obeying ub_dom.
                ub[v] = min(ub[v], cap)
            else:
                v = len(ub)
                ub.append(cap)
                y_defs.append((v, s, d, tuple(terms)))
            var_of[(s, d)] = v
            p = int(parents[d])
            if p >= 0:
                dom_terms[p].setdefault(s, []).append(v)
    dom_svc: list[IntArray] = []
    dom_var: list[IntArray] = []
    for d in range(n_dom):
        svcs = sorted(dom_terms[d])
        dom_svc.append(np.array(svcs, dtype=_INT))
        dom_var.append(np.array([var_of[(s, d)] for s in svcs], dtype=_INT))

    rows: list[tuple[IntArray, IntArray, int]] = []
    obj_var: list[int] = []
    obj_w: list[int] = []
    roots = np.flatnonzero(parents < 0)
    for s in range(prep.demand.size):
        vs = [var_of[(s, int(r))] for r in roots if (s, int(r)) in var_of]
        if len(vs) > 1:  # with one root the variable bound already holds demand
            rows.append(
                (np.array(vs, dtype=_INT), np.ones(len(vs), dtype=_INT), int(prep.demand[s]))
            )
        obj_var += vs
        obj_w += [int(prep.weights[s])] * len(vs)
    # GPUs per host and replica size; skip rows the bounds already imply.
    for k, cnt, wcap in prep.sizes:
        sel = np.flatnonzero(prep.gpus[x_s] >= k)
        for h in np.unique(x_h[sel]):
            mine = sel[x_h[sel] == h]
            ubs = prep.ub_host[x_s[mine], h]
            g = prep.gpus[x_s[mine]]
            if ubs.sum() > cnt[h]:
                rows.append((mine, np.ones(mine.size, dtype=_INT), int(cnt[h])))
            if g @ ubs > wcap[h]:
                rows.append((mine, g, int(wcap[h])))
    # The emission budget: one row over the host variables beneath the budgeted domain.
    if prep.em_budget is not None:
        coeff = prep.em[x_s, x_h]
        mine = np.flatnonzero(prep.em_in[x_h] & (coeff > 0))
        if mine.size and int(coeff[mine] @ prep.ub_host[x_s[mine], x_h[mine]]) > prep.em_budget:
            rows.append((mine.astype(_INT), coeff[mine], prep.em_budget))
    return _Structure(
        x_s=x_s,
        x_h=x_h,
        ub=np.array(ub, dtype=_INT),
        y_var=np.array([v for v, _, _, _ in y_defs], dtype=_INT),
        y_s=np.array([s for _, s, _, _ in y_defs], dtype=_INT),
        y_d=np.array([d for _, _, d, _ in y_defs], dtype=_INT),
        y_children=tuple(c for _, _, _, c in y_defs),
        dom_svc=tuple(dom_svc),
        dom_var=tuple(dom_var),
        obj_var=np.array(obj_var, dtype=_INT),
        obj_w=np.array(obj_w, dtype=_INT),
        rows=tuple(rows),
    )


def _power_row(prep: _Prep, st: _Structure, d: int, t: int) -> tuple[IntArray, IntArray]:
    """Variables and coefficients of domain ``d``'s power row in slot ``t``."""
    coeffs = prep.pk[st.dom_svc[d], t]
    keep = coeffs > 0
    return st.dom_var[d][keep], coeffs[keep]


@dataclass
class _Solve:
    status: str
    x: IntArray | None
    objective: float
    bound: float
    u: int  # value of the utilisation variable (0 if absent)


class _Model:
    """The CP-SAT model and the bookkeeping of emitted (domain, slot) constraints."""

    def __init__(self, prep: _Prep, st: _Structure, n_dom: int, current: IntArray | None) -> None:
        self.prep = prep
        self.st = st
        self.model = cp_model.CpModel()
        m = self.model
        self.gen_power = np.zeros((n_dom, prep.slots), dtype=bool)
        self.gen_util = np.zeros((n_dom, prep.slots), dtype=bool)
        self.vars = [m.new_int_var(0, int(u), f"v{i}") for i, u in enumerate(st.ub.tolist())]
        for v, children in zip(st.y_var.tolist(), st.y_children, strict=True):
            m.add(cp_model.LinearExpr.sum([self.vars[c] for c in children]) == self.vars[v])
        for ids, coeffs, rhs in st.rows:
            m.add(self._expr(ids, coeffs) <= rhs)
        self.hosted_expr = self._expr(st.obj_var, st.obj_w)
        em = prep.em[st.x_s, st.x_h]
        on = np.flatnonzero(em > 0).astype(_INT)
        self.em_terms = (on, em[on])
        self.em_expr = self._expr(on, em[on])
        self.u_var: Any = None
        self.current = current
        self.move_expr: Any = None
        self.move_vars: list[tuple[int, int, Any]] = []

    def _expr(self, ids: IntArray, coeffs: IntArray) -> Any:
        return cp_model.LinearExpr.weighted_sum([self.vars[i] for i in ids], coeffs.tolist())

    # -- constraint emission

    def emit_power(self, d: int, t: int) -> bool:
        """Add the power constraint of domain ``d`` in slot ``t``; False if already there."""
        if self.gen_power[d, t]:
            return False
        self.gen_power[d, t] = True
        ids, coeffs = _power_row(self.prep, self.st, d, t)
        if ids.size:
            self.model.add(self._expr(ids, coeffs) <= int(self.prep.rhs[d, t]))
        return True

    def emit_util(self, d: int, t: int) -> bool:
        """Tie the utilisation variable to domain ``d`` in slot ``t``:
        1000·(idle + load) ≤ U·capEff."""
        if self.gen_util[d, t] or self.u_var is None:
            return False
        self.gen_util[d, t] = True
        prep = self.prep
        ids, coeffs = _power_row(prep, self.st, d, t)
        expr = self._expr(ids, PERMILLE * coeffs) - int(prep.cap_u[d, t]) * self.u_var
        self.model.add(expr <= -PERMILLE * int(prep.idle_u[d]))
        return True

    def add_utilisation(self) -> None:
        self.u_var = self.model.new_int_var(0, 4 * PERMILLE, "peak_util")

    def add_moves(self, current: IntArray) -> None:
        """m[s, h] ≥ current − x: replicas leaving the domain they run in now."""
        terms: list[Any] = []
        constant = 0
        st = self.st
        index = {
            (s, h): i for i, (s, h) in enumerate(zip(st.x_s.tolist(), st.x_h.tolist(), strict=True))
        }
        for s, h in zip(*np.nonzero(current), strict=True):
            c = int(current[s, h])
            i = index.get((int(s), int(h)))
            if i is None:
                constant += c
                continue
            mv = self.model.new_int_var(0, c, f"m_{s}_{h}")
            self.model.add(mv + self.vars[i] >= c)
            self.move_vars.append((int(s), int(h), mv))
            terms.append(mv)
        self.move_expr = cp_model.LinearExpr.sum(terms) + constant

    # -- hints and solving

    def hint(self, x: IntArray, u: int | None = None) -> None:
        m = self.model
        m.clear_hints()  # type: ignore[no-untyped-call]
        for v, value in zip(self.vars, self.st.values(self.prep, x).tolist(), strict=True):
            m.add_hint(v, value)
        if self.u_var is not None and u is not None:
            m.add_hint(self.u_var, int(u))
        if self.current is not None:
            for s, h, mv in self.move_vars:
                m.add_hint(mv, max(0, int(self.current[s, h] - x[s, h])))

    def solve(self, deadline: float, workers: int, seed: int, gap: float) -> _Solve:
        solver = cp_model.CpSolver()
        p = solver.parameters
        p.max_time_in_seconds = max(0.05, deadline - time.perf_counter())
        p.num_workers = max(1, workers)
        p.random_seed = seed
        p.relative_gap_limit = gap
        status = solver.solve(self.model)
        name = solver.status_name(status)
        x: IntArray | None = None
        u = 0
        objective = math.nan
        if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            values = np.asarray(solver.response_proto.solution, dtype=_INT)
            x = self.st.counts(self.prep, values[: self.st.size])
            if self.u_var is not None:
                u = int(values[self.u_var.index])
            objective = float(solver.objective_value)
        bound = float(solver.best_objective_bound)
        return _Solve(name, x, objective, bound, u)


# ----------------------------------------------------------------- LP slot generation


@dataclass
class _LpResult:
    x: NDArray[np.float64]  # (S × H) fractional counts
    objective: float
    rounds: int
    converged: bool
    wall_s: float


def _lp_generate(
    prep: _Prep,
    st: _Structure,
    gen: BoolArray,
    spacing: int,
    deadline: float,
    minimise: tuple[IntArray, IntArray] | None = None,
    floor: int | None = None,
) -> _LpResult | None:
    """Run the lazy slot generation on the LP relaxation first (GLOP, fast) and mark
    every (domain, slot) it needed in ``gen``. A fractional optimum meets the slots
    near-optimal integer placements meet, so the CP-SAT rounds start close to the end.
    By default the LP maximises priority-weighted replicas; ``minimise`` (variable ids
    and coefficients) replaces that objective, with the weighted replicas held at
    ``floor`` or more (stage 1b). Returns ``None`` if GLOP is unavailable or fails."""
    began = time.perf_counter()
    lp = pywraplp.Solver.CreateSolver("GLOP")
    if lp is None:
        return None
    inf = lp.infinity()
    v = [lp.NumVar(0.0, float(u), "") for u in st.ub.tolist()]
    for y, children in zip(st.y_var.tolist(), st.y_children, strict=True):
        row = lp.Constraint(0.0, 0.0)
        row.SetCoefficient(v[y], -1.0)
        for c in children:
            row.SetCoefficient(v[c], 1.0)

    def add_row(ids: IntArray, coeffs: IntArray, rhs: float) -> None:
        row = lp.Constraint(-inf, rhs)
        for i, c in zip(ids.tolist(), coeffs.tolist(), strict=True):
            row.SetCoefficient(v[i], float(c))

    for ids, coeffs, rhs in st.rows:
        add_row(ids, coeffs, float(rhs))
    for d, t in zip(*np.nonzero(gen), strict=True):
        add_row(*_power_row(prep, st, int(d), int(t)), float(prep.rhs[d, t]))
    objective = lp.Objective()
    if minimise is None:
        for i, w in zip(st.obj_var.tolist(), st.obj_w.tolist(), strict=True):
            objective.SetCoefficient(v[i], float(w))
        objective.SetMaximization()
    else:
        for i, c in zip(*(a.tolist() for a in minimise), strict=True):
            objective.SetCoefficient(v[i], float(c))
        objective.SetMinimization()
        add_row(st.obj_var, -st.obj_w, -float(floor or 0))

    rounds = 0
    converged = False
    x = np.zeros(prep.ub_host.shape)
    value = 0.0
    tol = 1e-6 * np.maximum(1.0, np.abs(prep.rhs))
    while time.perf_counter() < deadline:
        lp.SetTimeLimit(max(1, int(1000 * (deadline - time.perf_counter()))))
        status = lp.Solve()
        rounds += 1
        if status != pywraplp.Solver.OPTIMAL:
            return None if rounds == 1 else _LpResult(x, value, rounds, False, 0.0)
        values = np.array([var.solution_value() for var in v[: st.x_s.size]])
        x = st.counts(prep, np.concatenate([values, np.zeros(st.size - values.size)]))
        value = float(objective.Value())
        load = (x @ prep.up_int).T @ prep.pk
        excess = np.where(gen, 0.0, load - prep.rhs - tol)
        excess[prep.dead] = 0.0
        if not (excess > 0).any():
            converged = True
            # Integer placements near the LP optimum load domains where the LP is
            # nearly binding: give the first CP-SAT round those slots too.
            near = np.where(gen | ~prep.live, -1.0, load - (1.0 - _NEAR_BINDING) * prep.rhs)
            near[prep.dead] = -1.0
            for d in np.flatnonzero((near > 0).any(axis=1)):
                for t in _pick_slots(near[d], spacing, _SLOTS_PER_ROUND):
                    gen[d, t] = True
            break
        for d in np.flatnonzero((excess > 0).any(axis=1)):
            for t in _pick_slots(excess[d], spacing, _SLOTS_PER_ROUND):
                gen[d, t] = True
                add_row(*_power_row(prep, st, int(d), t), float(prep.rhs[d, t]))
    return _LpResult(x, value, rounds, converged, time.perf_counter() - began)


# ------------------------------------------------------------------------ lazy driver


def _initial_slots(prep: _Prep, problem: Problem) -> list[tuple[int, int]]:
    """The (domain, slot) pairs the first solve sees."""
    pk = prep.pk.astype(np.float64)
    allow = np.maximum(prep.rhs, 1).astype(np.float64)
    glob: list[int] = []
    # Aggregate full-demand load against the tightest root allowance.
    roots = np.flatnonzero(problem.tree.parents < 0)
    full = np.minimum(prep.demand, prep.ub_dom[:, roots].sum(axis=1)) @ pk
    glob.append(int(np.argmax(full / allow[roots].min(axis=0))))
    # Peaks of the services that carry the most watts.
    heavy = np.argsort(-(prep.demand * prep.pk.max(axis=1, initial=0)), kind="stable")
    for s in heavy:
        if len(glob) > _MAX_SERVICE_PEAK_SLOTS or prep.demand[s] == 0:
            break
        t = int(np.argmax(prep.pk[s]))
        if t not in glob:
            glob.append(t)
    # The tightest cap, if caps follow a schedule.
    tight = prep.rhs[prep.live.any(axis=1)]
    if tight.size and (tight != tight[:, :1]).any():
        t = int(np.argmin(tight.sum(axis=0)))
        if t not in glob:
            glob.append(t)
    pairs: list[tuple[int, int]] = []
    ratio = prep.potential / allow
    for d in np.flatnonzero(prep.live.any(axis=1)):
        own = int(np.argmax(np.where(prep.live[d], ratio[d], -np.inf)))
        pairs += [(int(d), t) for t in dict.fromkeys([own, *glob]) if prep.live[d, t]]
    return pairs


@dataclass
class _StageResult:
    x: IntArray
    status: str
    rounds: int
    bound: float
    converged: bool  # the last solve passed the full check


def _add_violations(model: _Model, excess: IntArray, spacing: int, util: bool) -> int:
    """Emit constraints for violated (domain, slot) pairs; returns how many were new."""
    added = 0
    for d in np.flatnonzero((excess > 0).any(axis=1)):
        for t in _pick_slots(excess[d], spacing, _SLOTS_PER_ROUND):
            added += model.emit_util(int(d), t) if util else model.emit_power(int(d), t)
    return added


class _Planner:
    def __init__(
        self,
        prep: _Prep,
        model: _Model,
        workers: int,
        seed: int,
        gap: float,
        current: IntArray | None,
        spacing: int,
    ) -> None:
        self.prep = prep
        self.model = model
        self.workers = workers
        self.seed = seed
        self.gap = gap
        self.current = current
        self.spacing = spacing
        self.solves = 0
        self.trace: list[dict[str, Any]] = []  # one entry per stage-1 round

    def _violations(self, x: IntArray) -> IntArray:
        """(D × T) power excess of a solution, every domain and slot (the generated
        ones hold by construction; the others are what the next round must add)."""
        return _power_excess(self.prep, x)

    def stage_hosted(self, start: IntArray, deadline: float) -> _StageResult:
        """Stage 1: maximise priority-weighted replicas, generating slots lazily."""
        m = self.model
        m.model.maximize(m.hosted_expr)
        best, best_val = start, _value(self.prep, start)
        floor = -1
        bound = math.inf
        rounds = 0
        status = "UNKNOWN"
        converged = False
        while True:
            if best_val > floor:  # never accept less than a known feasible placement
                m.model.add(m.hosted_expr >= best_val)
                floor = best_val
            m.hint(best)
            began = time.perf_counter()
            res = m.solve(deadline, self.workers, self.seed, self.gap)
            rounds += 1
            status = res.status
            if res.x is not None and math.isfinite(res.bound):
                # Without a solution CP-SAT's bound may be a placeholder (0).
                bound = min(bound, max(res.bound, float(best_val)))
            step: dict[str, Any] = {
                "status": res.status,
                "solve_s": round(time.perf_counter() - began, 3),
                "objective": _finite(res.objective),
                "bound": _finite(res.bound),
            }
            self.trace.append(step)
            if res.x is None:
                break
            excess = self._violations(res.x)
            if not (excess > 0).any():
                if _value(self.prep, res.x) >= best_val:
                    best, best_val = res.x, _value(self.prep, res.x)
                converged = True
                break
            added = _add_violations(m, excess, self.spacing, util=False)
            step["violated_domain_slots"] = int((excess > 0).sum())
            step["added"] = added
            repaired = _make_feasible(self.prep, res.x)
            step["repaired"] = _value(self.prep, repaired)
            if _value(self.prep, repaired) > best_val:
                best, best_val = repaired, _value(self.prep, repaired)
            if best_val >= (1.0 - self.gap) * bound:
                # The repaired placement is feasible on every slot and within the gap
                # of a valid bound: as good as another round would be asked to be.
                converged = True
                status = "OPTIMAL" if best_val >= bound else "FEASIBLE"
                break
            if added == 0 or time.perf_counter() >= deadline:
                break
        self.solves += rounds
        return _StageResult(best, status, rounds, bound, converged)

    def stage_emissions(self, start: IntArray, deadline: float) -> tuple[_StageResult, int]:
        """Stage 1b: hold stage 1, minimise emissions (every host, at its intensity).
        Later stages then hold the emissions reached."""
        m, prep = self.model, self.prep
        m.model.add(m.hosted_expr >= _value(prep, start))
        m.model.minimize(m.em_expr)
        best, best_e = start, _emitted(prep, start)
        rounds = 0
        status = "UNKNOWN"
        converged = False
        while time.perf_counter() < deadline:
            m.model.add(m.em_expr <= best_e)  # never accept more than a known placement
            m.hint(best)
            # A round need not prove its optimum: its solution mostly shows which slots
            # the next round needs. Shorter rounds leave time for more of them.
            now = time.perf_counter()
            res = m.solve(
                min(deadline, now + max(0.5, (deadline - now) / 3)),
                self.workers,
                self.seed,
                self.gap,
            )
            rounds += 1
            status = res.status
            if res.x is None:
                break
            power = self._violations(res.x)
            if not (power > 0).any():
                if _emitted(prep, res.x) <= best_e:
                    best, best_e = res.x, _emitted(prep, res.x)
                converged = True
                if res.status == "OPTIMAL":
                    break
                continue  # passed every slot but stopped short: keep improving
            # A repaired solution is kept only if it hosts as much and emits less.
            repaired = _make_feasible(prep, res.x)
            if _value(prep, repaired) >= _value(prep, start) and _emitted(prep, repaired) < best_e:
                best, best_e = repaired, _emitted(prep, repaired)
            if _add_violations(m, power, self.spacing, util=False) == 0:
                break
        self.solves += rounds
        m.model.add(m.em_expr <= best_e)
        return _StageResult(best, status, rounds, math.nan, converged), best_e

    def true_util(self, x: IntArray) -> int:
        util = _util_permille(self.prep, _load(self.prep, x))
        return int(util.max()) if util.size else 0

    def stage_spread(self, start: IntArray, deadline: float) -> tuple[_StageResult, int]:
        """Stage 2: hold stage 1, minimise the peak utilisation below the root."""
        m, prep = self.model, self.prep
        m.model.add(m.hosted_expr >= _value(prep, start))
        m.add_utilisation()
        for d, t in zip(*np.nonzero(m.gen_power & prep.util_domains[:, None]), strict=True):
            m.emit_util(int(d), int(t))
        self._util_at_peaks(start)
        m.model.minimize(m.u_var)
        best, best_u = start, self.true_util(start)
        rounds = 0
        status = "UNKNOWN"
        converged = False
        while time.perf_counter() < deadline:
            m.model.add(m.u_var <= best_u)
            m.hint(best, best_u)
            res = m.solve(deadline, self.workers, self.seed, self.gap)
            rounds += 1
            status = res.status
            if res.x is None:
                break
            power = self._violations(res.x)
            util_excess = self._util_excess(res.x, res.u)
            if not (power > 0).any():
                u = self.true_util(res.x)
                if u < best_u:
                    best, best_u = res.x, u
            if not (power > 0).any() and not (util_excess > 0).any():
                converged = True
                break
            added = _add_violations(m, power, self.spacing, util=False)
            added += _add_violations(m, util_excess, self.spacing, util=True)
            if added == 0:
                break
        self.solves += rounds
        return _StageResult(best, status, rounds, math.nan, converged), best_u

    def stage_moves(
        self, start: IntArray, u_cap: int, current: IntArray, deadline: float
    ) -> _StageResult:
        """Stage 3: hold stages 1 and 2, minimise replicas moved from ``current``."""
        m = self.model
        if m.u_var is None:  # stage 2 did not run: at least do not spread worse
            m.add_utilisation()
            self._util_at_peaks(start)
        m.model.add(m.u_var <= u_cap)
        m.add_moves(current)
        m.model.minimize(m.move_expr)
        best, best_moves = start, _moves(start, current)
        rounds = 0
        status = "UNKNOWN"
        converged = False
        while time.perf_counter() < deadline and best_moves > 0:
            m.hint(best, self.true_util(best))
            res = m.solve(deadline, self.workers, self.seed, self.gap)
            rounds += 1
            status = res.status
            if res.x is None:
                break
            power = self._violations(res.x)
            util_excess = self._util_excess(res.x, u_cap)
            ok = not (power > 0).any() and not (util_excess > 0).any()
            if ok and _moves(res.x, current) < best_moves:
                best, best_moves = res.x, _moves(res.x, current)
            if ok:
                converged = True
                break
            added = _add_violations(m, power, self.spacing, util=False)
            added += _add_violations(m, util_excess, self.spacing, util=True)
            if added == 0:
                break
        self.solves += rounds
        return _StageResult(best, status, rounds, math.nan, converged or best_moves == 0)

    def _util_excess(self, x: IntArray, u: int) -> IntArray:
        """(D × T) how far true utilisation exceeds ``u`` where no link exists yet."""
        util = _util_permille(self.prep, _load(self.prep, x))
        excess = util - u
        excess[self.model.gen_util] = 0
        return excess

    def _util_at_peaks(self, x: IntArray) -> None:
        util = _util_permille(self.prep, _load(self.prep, x))
        for d in np.flatnonzero(self.prep.util_domains):
            self.model.emit_util(int(d), int(np.argmax(util[d])))


# ------------------------------------------------------------------------------ packing


def _host_counts(prep: _Prep, counts: IntArray) -> IntArray:
    """(S × H) per-host replica counts of a node-level (S × N) count matrix."""
    out = np.zeros((counts.shape[0], prep.hosts.size), dtype=_INT)
    if counts.size:
        np.add.at(out.T, prep.host_of_node, counts.T)
    return out


def _pack(
    problem: Problem, prep: _Prep, x: IntArray, current: IntArray | None
) -> tuple[Assignment, int]:
    """Put per-host counts on nodes. Replicas that run on a node now stay there; the
    rest go best-fit decreasing by GPUs (heaviest weight first among equal sizes).
    Returns the assignment and how many replicas did not fit on any node."""
    fleet = problem.fleet
    n_svc = x.shape[0]
    counts = np.zeros((n_svc, fleet.size), dtype=_INT)
    free = fleet.gpus.astype(_INT).copy()
    dropped = 0
    order = sorted(range(n_svc), key=lambda s: (-int(prep.gpus[s]), -int(prep.weights[s]), s))
    for h in range(prep.hosts.size):
        nodes = np.flatnonzero(prep.host_of_node == h)
        want = x[:, h].copy()
        if current is not None:
            for s in order:
                g = int(prep.gpus[s])
                for n in nodes:
                    if want[s] == 0:
                        break
                    keep = min(int(current[s, n]), int(want[s]))
                    if g:
                        keep = min(keep, int(free[n]) // g)
                    if keep > 0:
                        counts[s, n] += keep
                        free[n] -= keep * g
                        want[s] -= keep
        for s in order:
            g = int(prep.gpus[s])
            for _ in range(int(want[s])):
                fits = nodes[free[nodes] >= g]
                if fits.size == 0:
                    dropped += 1
                    continue
                best = int(fits[np.argmin(free[fits])])
                counts[s, best] += 1
                free[best] -= g
    return Assignment(counts), dropped


def _fix_float_violations(problem: Problem, assignment: Assignment, dead: BoolArray) -> Assignment:
    """Safety net against float rounding: drop replicas while the float check fails.

    The integer model is conservative, so this should never remove anything."""
    caps = problem.effective_caps
    load = assignment.load(problem)
    over = violations(load, caps) & ~dead[:, None]
    if not over.any():
        return assignment
    counts = assignment.counts.copy()
    weights = priority_weights(problem.services.priority)
    profiles = problem.services.profiles
    membership = problem.tree.membership
    node_dom = problem.fleet.domain
    while over.any():
        excess = np.where(over, load - caps, -np.inf)
        d, t = np.unravel_index(int(np.argmax(excess)), excess.shape)
        nodes_under = np.flatnonzero(membership[d, node_dom])
        sub = counts[:, nodes_under]
        s_ok = np.flatnonzero((sub.sum(axis=1) > 0) & (profiles[:, t] > 0))
        s = int(s_ok[np.argmin(weights[s_ok] / profiles[s_ok, t])])
        n = int(nodes_under[np.argmax(sub[s])])
        counts[s, n] -= 1
        load[membership[:, node_dom[n]]] -= profiles[s]
        over = violations(load, caps) & ~dead[:, None]
    return Assignment(counts)


# ------------------------------------------------------------------------ entry point


def _finite(value: float) -> float | None:
    """``value``, or ``None`` for NaN/infinity (stats end up in JSON)."""
    return value if math.isfinite(value) else None


def _weighted(problem: Problem, assignment: Assignment) -> float:
    if problem.services.size == 0:
        return 0.0
    return float(priority_weights(problem.services.priority) @ assignment.hosted)


def plan_cpsat(
    problem: Problem,
    time_limit_s: float = 30.0,
    workers: int = 2,
    hint: Assignment | None = None,
    seed: int = 0,
    relative_gap: float = 0.005,
) -> Plan:
    """Plan the placement with CP-SAT (see the module docstring for the model).

    ``time_limit_s`` bounds the solver time of all stages together (model building and
    the greedy warm start come on top, and are small); ``workers`` is CP-SAT's thread
    count; ``hint`` is an optional placement to start from (it need not be feasible);
    stage 1 stops once within ``relative_gap`` of its bound.

    ``stats``: ``objective`` is the priority-weighted replicas the returned assignment
    hosts, ``bound`` the best stage-1 bound of the integer model, ``gap`` their relative
    difference, ``iterations`` the stage-1 lazy slot-generation rounds (LP solves plus
    CP-SAT solves; ``extra["lp"]`` and ``extra["stage1"]`` split them) and
    ``slot_constraints`` the (domain, slot) power constraints emitted. ``extra`` has
    per-stage details, ``hosted``, ``moves``, ``peak_util_permille``, ``unpacked``,
    ``idle_over_cap``, ``fallback`` and, with carbon terms, ``emissions``
    (:meth:`placement.carbon.emissions.PlanEmissions.as_dict`).
    """
    start = time.perf_counter()
    svc, fleet = problem.services, problem.fleet
    for name, given in (("problem.current", problem.current), ("hint", hint)):
        arr = given.counts if isinstance(given, Assignment) else given
        if arr is not None and arr.shape != (svc.size, fleet.size):
            raise ValueError(
                f"{name} has shape {arr.shape}; expected (services, nodes) = "
                f"({svc.size}, {fleet.size})"
            )
    if svc.size == 0 or fleet.size == 0 or int(svc.demand.clip(min=0).sum()) == 0:
        return _empty_plan(problem, start, "nothing to place (no services, nodes or demand)")

    from placement.strategies.greedy import plan_greedy

    prep = _prepare(problem)
    idle_over = [problem.tree.names[d] for d in np.flatnonzero(prep.dead)]
    if not prep.ub_host.any():
        plan = _empty_plan(problem, start, "no replica fits anywhere (GPUs or power)")
        plan.stats.extra["idle_over_cap"] = idle_over
        return plan

    greedy = plan_greedy(problem)
    greedy_ok = (
        not violations(greedy.assignment.load(problem), problem.effective_caps)[~prep.dead].any()
        and _budget_left(prep, _host_counts(prep, greedy.assignment.counts)) >= 0
    )
    greedy_value = _weighted(problem, greedy.assignment)

    current = _host_counts(prep, problem.current) if problem.current is not None else None
    # Starting points, every one made feasible for the integer model; ties favour the
    # current placement (no moves), then the caller's hint, then greedy.
    starts: list[tuple[str, IntArray]] = []
    if current is not None:
        starts.append(("current", _make_feasible(prep, current)))
    if hint is not None:
        starts.append(("hint", _make_feasible(prep, _host_counts(prep, hint.counts))))
    if greedy_ok:
        starts.append(
            ("greedy", _make_feasible(prep, _host_counts(prep, greedy.assignment.counts)))
        )
    starts.append(("empty", np.zeros_like(prep.ub_host)))

    limit = max(0.0, float(time_limit_s))
    t0 = time.perf_counter()
    end = t0 + limit

    def stage_deadline(share: float) -> float:
        return min(end, time.perf_counter() + share * limit)

    spacing = max(1, round(_SLOT_SPACING_H * 3600 / problem.grid.step_s))
    st = _structure(prep, problem.tree.parents)
    gen = np.zeros(prep.rhs.shape, dtype=bool)
    initial = _initial_slots(prep, problem)
    for d, t in initial:
        gen[d, t] = True
    lp = _lp_generate(prep, st, gen, spacing, stage_deadline(0.25))
    if lp is not None:
        starts.append(("lp", _make_feasible(prep, np.floor(lp.x + 1e-6).astype(_INT))))
    start_name, x0 = max(starts, key=lambda kv: _value(prep, kv[1]))

    model = _Model(prep, st, problem.tree.size, current)
    for d, t in zip(*np.nonzero(gen), strict=True):
        model.emit_power(int(d), int(t))
    planner = _Planner(prep, model, workers, seed, relative_gap, current, spacing)
    build_s = time.perf_counter() - start

    carbon_aware = problem.carbon is not None and bool(prep.em.any())
    share1 = 0.6 if current is not None or carbon_aware else 0.8
    s1 = planner.stage_hosted(x0, min(end, t0 + share1 * limit))
    # The secondary objectives get at most as long as the primary one took (at least a
    # second) and a fifth of the limit each: they refine, they must not dominate.
    refine_s = min(0.2 * limit, max(1.0, time.perf_counter() - t0))
    x = s1.x
    value1 = _value(prep, x)
    extra: dict[str, Any] = {
        "start": start_name,
        "build_s": round(build_s, 3),
        "stage1": {
            "status": s1.status,
            "rounds": s1.rounds,
            "converged": s1.converged,
            "objective": value1,
            "bound": _finite(s1.bound),
            "wall_s": round(time.perf_counter() - t0, 3),
            "trace": planner.trace,
        },
        "initial_slot_constraints": len(initial),
        "lp": None
        if lp is None
        else {
            "rounds": lp.rounds,
            "converged": lp.converged,
            "objective": lp.objective,
            "slot_constraints": int(gen.sum()),
            "wall_s": round(lp.wall_s, 3),
        },
        "live_domain_slots": int(prep.live.sum()),
        "idle_over_cap": idle_over,
        "greedy_objective": greedy_value,
        "fallback": None,
    }

    if carbon_aware and value1 > 0 and time.perf_counter() < end:
        te = time.perf_counter()
        # The LP relaxation finds most slots the greener placement needs, cheaply.
        # Emissions are what the caller asked to be counted: this stage gets at least
        # 30% of the limit even when stage 1 was quick, the LP at most 60% of that.
        stage_end = min(end, te + max(refine_s, 0.3 * limit))
        gen_e = model.gen_power.copy()
        lp_e = _lp_generate(
            prep,
            st,
            gen_e,
            spacing,
            te + 0.6 * (stage_end - te),
            minimise=model.em_terms,
            floor=value1,
        )
        # Where the start is nearly binding, moving load in breaks the cap first: a
        # greener placement shifts load between sites, so those slots go in too.
        near = _load(prep, x) - (1.0 - _NEAR_BINDING) * prep.rhs
        near[~prep.live | gen_e] = -1
        near[prep.dead] = -1
        for row in np.flatnonzero((near > 0).any(axis=1)):
            for slot in _pick_slots(near[row], spacing, _SLOTS_PER_ROUND):
                gen_e[row, slot] = True
        for d, t in zip(*np.nonzero(gen_e & ~model.gen_power), strict=True):
            model.emit_power(int(d), int(t))
        se, e_best = planner.stage_emissions(x, stage_end)
        extra["stage_emissions"] = {
            "status": se.status,
            "rounds": se.rounds,
            "converged": se.converged,
            "start_kg": round(_emitted(prep, x) / EMISSION_SCALE, 3),
            "lp_rounds": None if lp_e is None else lp_e.rounds,
            "lp_s": None if lp_e is None else round(lp_e.wall_s, 3),
            "kg": round(e_best / EMISSION_SCALE, 3),
            "wall_s": round(time.perf_counter() - te, 3),
        }
        x = se.x

    u_best: int | None = None
    if value1 > 0 and time.perf_counter() < end:
        t2 = time.perf_counter()
        s2, u_best = planner.stage_spread(x, min(end, t2 + refine_s))
        x = s2.x
        extra["stage2"] = {
            "status": s2.status,
            "rounds": s2.rounds,
            "converged": s2.converged,
            "peak_util_permille": u_best,
            "wall_s": round(time.perf_counter() - t2, 3),
        }
    if current is not None and value1 > 0 and time.perf_counter() < end:
        t3 = time.perf_counter()
        u_cap = u_best if u_best is not None else planner.true_util(x)
        s3 = planner.stage_moves(x, u_cap, current, min(end, t3 + refine_s))
        x = s3.x
        extra["stage3"] = {
            "status": s3.status,
            "rounds": s3.rounds,
            "converged": s3.converged,
            "moves": _moves(x, current),
            "wall_s": round(time.perf_counter() - t3, 3),
        }

    assignment, dropped = _pack(problem, prep, x, problem.current)
    assignment = _fix_float_violations(problem, assignment, prep.dead)
    value = _weighted(problem, assignment)
    extra["unpacked"] = dropped
    if greedy_ok and value < greedy_value:
        assignment, value = greedy.assignment, greedy_value
        extra["fallback"] = "greedy: the CP-SAT placement hosted less after packing"
    x_final = _host_counts(prep, assignment.counts)
    extra["hosted"] = int(assignment.hosted.sum())
    extra["peak_util_permille"] = planner.true_util(x_final)
    extra["moves"] = _moves(x_final, current)
    extra["util_constraints"] = int(model.gen_util.sum())
    if problem.carbon is not None:
        from placement.carbon.emissions import plan_emissions

        extra["emissions"] = plan_emissions(problem, assignment).as_dict()
    extra["solves"] = planner.solves

    bound_value = s1.bound
    if lp is not None and lp.converged:  # the LP optimum on all slots bounds it too
        bound_value = min(bound_value, math.floor(lp.objective + 1e-6))
    bound = max(bound_value, float(value1)) if math.isfinite(bound_value) else None
    if bound is not None and value > bound:
        # Only possible through the greedy fallback: greedy is checked in floats, the
        # bound holds for the conservatively rounded integer model.
        extra["bound_note"] = f"integer-model bound {bound:g} raised to the greedy value"
        bound = value
    gap = None if bound is None else (bound - value) / max(1.0, abs(bound))
    # CP-SAT says OPTIMAL once the gap limit is met; only a closed gap is optimal here.
    proved = s1.converged and bound is not None and bound <= value1 + 1e-6
    status = "OPTIMAL" if proved else "FEASIBLE"
    if not s1.converged:
        extra["note"] = (
            "stage 1 stopped (time limit) before a solution passed the full slot check "
            "or came within the gap; the best repaired feasible placement was kept"
        )
    stats = SolverStats(
        status=status,
        objective=value,
        bound=bound,
        gap=gap,
        wall_s=time.perf_counter() - start,
        iterations=s1.rounds + (lp.rounds if lp is not None else 0),
        slot_constraints=int(model.gen_power.sum()),
        extra=extra,
    )
    return Plan("cpsat", assignment, stats)


def _empty_plan(problem: Problem, start: float, why: str) -> Plan:
    stats = SolverStats(
        status="OPTIMAL",
        objective=0.0,
        bound=0.0,
        gap=0.0,
        wall_s=time.perf_counter() - start,
        extra={
            "note": why,
            "hosted": 0,
            "moves": int(problem.current.sum()) if problem.current is not None else 0,
            "unpacked": 0,
            "idle_over_cap": [],
            "fallback": None,
        },
    )
    return Plan("cpsat", Assignment.empty(problem), stats)
