"""``cpsat``: the placement a global optimiser finds, with OR-Tools CP-SAT.

What a caller gets
------------------
:func:`plan_cpsat` returns a :class:`~placement.strategies.Plan` whose assignment has
no predicted violation at any level of the tree in any slot (the one exception: a
domain whose node idle draw alone exceeds its cap; nothing is placed under it and it
is named in ``stats.extra["idle_over_cap"]``). It never hosts fewer priority-weighted
replicas than the ``greedy`` strategy: if it would, greedy's assignment is returned
and ``stats.extra["fallback"]`` says so.

The model
---------
* ``x[s, h]`` — replicas of service ``s`` in host domain ``h`` (a domain with nodes,
  normally a leaf). Nodes of a domain are interchangeable, so the model counts per
  domain, not per node; that removes the node symmetry that makes per-node models slow.
  Every higher domain gets ``y[s, d] = Σ_children y`` so each power constraint has one
  term per service whatever the level.
* Demand: ``Σ_h x[s, h] ≤ demand_s``.
* GPUs, per host domain and per distinct replica size ``k``: replicas of ``k`` or more
  GPUs number at most ``Σ_nodes ⌊gpus/k⌋`` (so 8-GPU replicas need a whole 8-GPU node
  each) and use at most the GPUs of the nodes with ``k`` or more. With replica sizes
  that divide each other (1, 2, 4, 8) on 8-GPU nodes these are exact. After solving,
  the per-domain counts are packed onto nodes (replicas already running on a node
  stay there, the rest best-fit decreasing by GPUs); a replica that cannot be packed
  (possible with sizes such as 3 or 6) is dropped, reported as unplaced and counted
  in ``stats.extra["unpacked"]``.
* Power, every domain ``d`` at every level and every slot ``t``:
  ``Σ_s p_s(t)·y[s, d] ≤ capEff(d, t) − idle(d)``, with profiles rounded up and the
  right-hand side rounded down to milliwatts (see :data:`WATT_SCALE`), so the integer
  model is never more permissive than the float admission check.
* Emission budget (``problem.carbon`` with a budget, see :mod:`placement.carbon`): one
  static row ``Σ_{s, h under B} e[s, h]·x[s, h] ≤ budget − idleKg(B)`` for the budgeted
  domain ``B``, where ``e[s, h]`` is what one replica emits over the window on host
  ``h``'s grid; rounded like the watts (milligrams, :data:`EMISSION_SCALE`). It is one
  linear row over the window, so it needs no lazy generation; the repair and fill
  heuristics respect it too.

Lazy slots
----------
The T constraints per domain are not all emitted. The first model sees a few critical
slots per domain: the slot where its potential load (a fractional knapsack of its GPUs)
is highest against its cap, the aggregate full-demand peak, the peaks of the largest
services and the tightest cap of a schedule. Slot generation then runs on the LP
relaxation (GLOP): solve, check all domains and slots with numpy, add the violated
(domain, slot) pairs (per domain the worst slots, at most 8, half an hour apart),
repeat until the LP optimum holds everywhere; slots where it is within 2% of the cap
are added too. Then CP-SAT rounds, the same way: solve (hinted with the best feasible
placement known, and required to host at least as much), check every slot, add the
violated pairs. Each violating solution is repaired — replicas moved out of the
violating domain to one with room on every slot, or dropped if none has room, then
free room refilled — and the loop stops as soon as a solution passes the full check
or the repaired placement is within ``relative_gap`` of the bound. Every solve is a
relaxation of the full model, so its bound is valid for the full model. If time runs
out first, the best feasible placement known is kept (the repaired solutions, the
rounded LP optimum, greedy, the current placement, the caller's hint).

Objective (lexicographic, one staged solve each)
-------------------------------------------------
1. Maximise priority-weighted replicas hosted; weights are
   :func:`placement.metrics.priority_weights` (the rank of each distinct priority,
   lowest = 1, so zero and negative priorities are fine).
1b. With carbon terms (``problem.carbon``): with stage 1 held, minimise emissions
   ``Σ e[s, h]·x[s, h]`` over every host. At the same priority-weighted count this
   puts replicas on cleaner grids (intensity per site) and, on one grid, picks the
   service mix that emits least; later stages hold the emissions reached.
2. With stage 1 held at the value it reached, minimise the peak utilisation —
   load/capEff in per-mille, the maximum over domains below the root (the root's load
   is fixed by what stage 1 hosts, so it carries no spreading signal) and over every
   slot. In a power-bound tree some rack usually sits at 100% and this stage cannot
   improve anything; it matters when GPUs, not power, are short.
3. If ``problem.current`` is given: with both held, minimise moves — replicas taken
   away from the domain they run in now (per domain; packing then keeps them on their
   current nodes). Because spread comes before moves, a re-plan may move a replica
   that fits where it is if that lowers the peak utilisation. ``current`` (made
   feasible) is also the preferred starting point when it hosts as much as the others.

Stages 2 and 3 check every slot too: their solutions get the same lazy rounds, and the
utilisation variable is tied lazily to the (domain, slot) pairs where it is exceeded.

Stage 1 (the LP phase included) may use 80% of the time limit (60% when stage 1b or
stage 3 runs). Stage 1b first runs its own LP slot generation (minimise emissions with
stage 1 held), then CP-SAT rounds capped at a third of the time left each; the stage
gets at least 30% of the limit, its LP at most 60% of that. Stages 2 and 3 refine: each
gets at most as long as stage 1 took (at least a second) and at most a fifth of the
limit, so a quick stage 1 returns quickly. The bound and gap reported are stage 1's.

Modules
-------
:mod:`~placement.strategies.cpsat.planning` (:func:`plan_cpsat`: inputs, starting
points, the stages in order, packing, stats) runs the others:
:mod:`~placement.strategies.cpsat.prep` (the problem in model units),
:mod:`~placement.strategies.cpsat.measures` (load, excess, utilisation and value of a
placement), :mod:`~placement.strategies.cpsat.repair` (make a placement feasible and
fill it), :mod:`~placement.strategies.cpsat.structure` and
:mod:`~placement.strategies.cpsat.model` (the model in index form and as CP-SAT),
:mod:`~placement.strategies.cpsat.lazy_slots` (the slots the first model sees and the
solve → check → add loop), :mod:`~placement.strategies.cpsat.relaxation` (that loop on
the LP), :mod:`~placement.strategies.cpsat.stages` (that loop for each objective
stage) and :mod:`~placement.strategies.cpsat.packing` (counts onto nodes).
"""

from placement.strategies.cpsat.planning import plan_cpsat

__all__ = ["plan_cpsat"]
