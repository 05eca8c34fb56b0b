"""Repair and fill: turn any per-host counts into a placement that meets demand, GPUs,
power in every slot and the emission budget, then add what still fits. Starting points
and violating solver solutions go through here."""

from __future__ import annotations

import numpy as np

from placement.strategies.cpsat.measures import budget_left, power_excess
from placement.strategies.cpsat.prep import BIG, INT, BoolArray, IntArray, Prep


def make_feasible(prep: Prep, x_in: IntArray) -> IntArray:
    """A feasible placement near ``x``: drop what violates, then fill what still fits."""
    return _fill(prep, _drop_to_feasible(prep, x_in))


def _fill(prep: Prep, x_in: IntArray) -> IntArray:
    """Add replicas to a feasible ``x`` while they fit every slot, GPU and demand limit.

    Services go in order of weight, then of mean watts (more replicas per watt first);
    each goes to the hosts with the most room first.
    """
    x = x_in.copy()
    excess = power_excess(prep, x)
    excess[prep.dead] = np.maximum(excess[prep.dead], 1)  # nothing goes under a dead domain
    left = budget_left(prep, x)
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


def _drop_to_feasible(prep: Prep, x_in: IntArray) -> IntArray:
    """Make ``x`` satisfy demand, GPUs and power in every slot.

    Demand and GPU excesses are trimmed (lightest replicas first). Power is fixed at the
    worst (domain, slot) first: a replica drawing power there moves to a host outside
    the domain with room on every slot if there is one, otherwise the replica with the
    least weight per watt in that slot is dropped. Then, over an emission budget,
    replicas under the budgeted domain are dropped, least weight per emission first
    (a drop never adds power, so the power fix holds).
    """
    x = _trim_demand_and_gpus(prep, x_in)
    # Power: fix the worst (domain, slot) until none is left.
    excess = power_excess(prep, x)
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
                source = _fullest_host(x, int(victim), under)
                _shift(prep, x, excess, int(victim), source, -1)
                _shift(prep, x, excess, int(victim), dest, 1)
                moved = True
                break
        if moved:
            continue
        # Otherwise drop: least weight per watt relieved goes first.
        victim = int(cand[np.argmin(prep.weights[cand] / prep.pk[cand, t])])
        source = _fullest_host(x, victim, under)
        need = -(-over // int(prep.pk[victim, t]))
        _shift(prep, x, excess, victim, source, -min(need, int(x[victim, source])))


def _trim_demand_and_gpus(prep: Prep, x_in: IntArray) -> IntArray:
    """``x`` within the host bounds, demand (biggest host counts trimmed first) and the
    GPUs of every host (lightest replicas dropped first)."""
    x = np.clip(x_in, 0, None).astype(INT)
    x = np.minimum(x, prep.ub_host)
    for s in np.flatnonzero(x.sum(axis=1) > prep.demand):
        extra = int(x[s].sum() - prep.demand[s])
        for h in np.argsort(-x[s], kind="stable"):
            take = min(extra, int(x[s, h]))
            x[s, h] -= take
            extra -= take
            if extra == 0:
                break
    for k, cnt, wcap in prep.sizes:
        members = np.flatnonzero(prep.gpus >= k)
        order = members[np.argsort(prep.weights[members], kind="stable")]
        for h in range(x.shape[1]):
            while x[members, h].sum() > cnt[h] or prep.gpus[members] @ x[members, h] > wcap[h]:
                lightest = next(int(i) for i in order if x[i, h] > 0)
                x[lightest, h] -= 1
    return x


def _drop_to_budget(prep: Prep, x: IntArray) -> IntArray:
    """Drop replicas under the budgeted domain, least weight per emission first, until
    ``x`` is within the budget (changes ``x`` in place and returns it)."""
    over = -budget_left(prep, x)
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


def _fullest_host(x: IntArray, s: int, among: BoolArray) -> int:
    """The host in ``among`` with the most replicas of ``s``."""
    return int(np.argmax(np.where(among, x[s], -1)))


def _shift(prep: Prep, x: IntArray, excess: IntArray, s: int, h: int, k: int) -> None:
    """Add ``k`` (negative: remove) replicas of ``s`` to host ``h``, updating ``excess``."""
    x[s, h] += k
    excess[prep.paths[h]] += k * prep.pk[s]


def _room(prep: Prep, x: IntArray, excess: IntArray, s: int, left: int | None = None) -> IntArray:
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
        room = np.minimum(room, np.where(prep.up, per_dom[None, :], BIG).min(axis=1))
    if prep.em_budget is not None:
        budget = max(0, budget_left(prep, x) if left is None else left)
        by_budget = budget // np.maximum(prep.em[s], 1)
        room = np.where(prep.em_in & (prep.em[s] > 0), np.minimum(room, by_budget), room)
    return np.asarray(room, dtype=INT)
