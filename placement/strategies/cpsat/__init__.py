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
stage) and :mod:`~placement.strategies.cpsat.packing` (counts onto nodes). From
``split_nodes`` nodes on, :mod:`~placement.strategies.cpsat.subtrees` plans the tree part
by part (row by row on a site) under the power split and whole-problem bound of
:mod:`~placement.strategies.cpsat.split`.
"""

from placement.strategies.cpsat.planning import plan_cpsat

__all__ = ["plan_cpsat"]
