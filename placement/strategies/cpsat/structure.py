"""The static part of the model in index form: variables, their bounds, the sums over
child domains, the demand, GPU and budget rows and the terms of every power row. Both
the CP-SAT model and the LP relaxation are built from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from placement.strategies.cpsat.prep import INT, IntArray, Prep

Row = tuple[IntArray, IntArray, int]
"""A static row ``Σ coeff·var ≤ rhs``: variable ids, coefficients, right-hand side."""


@dataclass(frozen=True)
class Structure:
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
    rows: tuple[Row, ...]  # static Σ coeff·var ≤ rhs rows

    @property
    def size(self) -> int:
        return int(self.ub.size)

    def values(self, prep: Prep, x: IntArray) -> IntArray:
        """Every variable's value for per-host counts ``x``."""
        out = np.empty(self.size, dtype=INT)
        out[: self.x_s.size] = x[self.x_s, self.x_h]
        if self.y_var.size:
            y = x @ prep.up_int
            out[self.y_var] = y[self.y_s, self.y_d]
        return out

    def counts(self, prep: Prep, values: NDArray[Any]) -> NDArray[Any]:
        """Per-host counts (S × H) from variable values (integers or LP floats)."""
        x = np.zeros(prep.ub_host.shape, dtype=values.dtype)
        x[self.x_s, self.x_h] = values[: self.x_s.size]
        return x


@dataclass(frozen=True)
class _Variables:
    """The variables of the model: per-host ``x``, then the new ``y`` sums."""

    ub: list[int]
    y_defs: list[tuple[int, int, int, tuple[int, ...]]]  # (variable, service, domain, terms)
    var_of: dict[tuple[int, int], int]  # (service, domain) → its variable
    dom_terms: list[dict[int, list[int]]]  # per domain: service → the terms its variable sums


def build_structure(prep: Prep, parents: IntArray) -> Structure:
    """The model's structure for ``prep`` over the tree given by ``parents``."""
    x_s, x_h = (a.astype(INT) for a in np.nonzero(prep.ub_host))
    v = _variables(prep, parents, x_s, x_h)
    dom_svc: list[IntArray] = []
    dom_var: list[IntArray] = []
    for d in range(parents.size):
        svcs = sorted(v.dom_terms[d])
        dom_svc.append(np.array(svcs, dtype=INT))
        dom_var.append(np.array([v.var_of[(s, d)] for s in svcs], dtype=INT))
    rows, obj_var, obj_w = _demand_rows(prep, parents, v.var_of)
    rows += _gpu_rows(prep, x_s, x_h)
    rows += _budget_rows(prep, x_s, x_h)
    return Structure(
        x_s=x_s,
        x_h=x_h,
        ub=np.array(v.ub, dtype=INT),
        y_var=np.array([i for i, _, _, _ in v.y_defs], dtype=INT),
        y_s=np.array([s for _, s, _, _ in v.y_defs], dtype=INT),
        y_d=np.array([d for _, _, d, _ in v.y_defs], dtype=INT),
        y_children=tuple(c for _, _, _, c in v.y_defs),
        dom_svc=tuple(dom_svc),
        dom_var=tuple(dom_var),
        obj_var=np.array(obj_var, dtype=INT),
        obj_w=np.array(obj_w, dtype=INT),
        rows=tuple(rows),
    )


def _variables(prep: Prep, parents: IntArray, x_s: IntArray, x_h: IntArray) -> _Variables:
    """One variable per (service, host) with room, and per (service, domain) above a
    sum of its children's, unless it has a single child term, which it reuses."""
    n_dom = parents.size
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
    return _Variables(ub, y_defs, var_of, dom_terms)


def _demand_rows(
    prep: Prep, parents: IntArray, var_of: dict[tuple[int, int], int]
) -> tuple[list[Row], list[int], list[int]]:
    """Demand rows over the root variables, and the objective's variables and weights."""
    rows: list[Row] = []
    obj_var: list[int] = []
    obj_w: list[int] = []
    roots = np.flatnonzero(parents < 0)
    for s in range(prep.demand.size):
        vs = [var_of[(s, int(r))] for r in roots if (s, int(r)) in var_of]
        if len(vs) > 1:  # with one root the variable bound already holds demand
            rows.append((np.array(vs, dtype=INT), np.ones(len(vs), dtype=INT), int(prep.demand[s])))
        obj_var += vs
        obj_w += [int(prep.weights[s])] * len(vs)
    return rows, obj_var, obj_w


def _gpu_rows(prep: Prep, x_s: IntArray, x_h: IntArray) -> list[Row]:
    """GPU rows per host and replica size; those the bounds already imply are skipped."""
    rows: list[Row] = []
    for k, cnt, wcap in prep.sizes:
        sel = np.flatnonzero(prep.gpus[x_s] >= k)
        for h in np.unique(x_h[sel]):
            mine = sel[x_h[sel] == h]
            ubs = prep.ub_host[x_s[mine], h]
            g = prep.gpus[x_s[mine]]
            if ubs.sum() > cnt[h]:
                rows.append((mine, np.ones(mine.size, dtype=INT), int(cnt[h])))
            if g @ ubs > wcap[h]:
                rows.append((mine, g, int(wcap[h])))
    return rows


def _budget_rows(prep: Prep, x_s: IntArray, x_h: IntArray) -> list[Row]:
    """The emission budget: one row over the host variables beneath the budgeted
    domain, if the bounds do not already imply it."""
    if prep.em_budget is None:
        return []
    coeff = prep.em[x_s, x_h]
    mine = np.flatnonzero(prep.em_in[x_h] & (coeff > 0))
    if mine.size and int(coeff[mine] @ prep.ub_host[x_s[mine], x_h[mine]]) > prep.em_budget:
        return [(mine.astype(INT), coeff[mine], prep.em_budget)]
    return []


def power_row(prep: Prep, st: Structure, d: int, *, t: int) -> tuple[IntArray, IntArray]:
    """Variables and coefficients of domain ``d``'s power row in slot ``t``."""
    coeffs = prep.pk[st.dom_svc[d], t]
    keep = coeffs > 0
    return st.dom_var[d][keep], coeffs[keep]
