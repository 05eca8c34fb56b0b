"""The public entry, :func:`plan_cpsat`: check the inputs, build the model from feasible
starting points and the LP slot generation, run the objective stages in order within
the time limit, pack the result onto nodes and report."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from placement.admission import violations
from placement.assignment import Assignment
from placement.metrics import priority_weights
from placement.problem import Problem
from placement.strategies import Plan, SolverStats
from placement.strategies.cpsat.lazy_slots import initial_slots, mark_near_binding, slot_spacing
from placement.strategies.cpsat.measures import (
    budget_left,
    emitted,
    host_counts,
    load,
    moves,
    peak_util,
    value,
)
from placement.strategies.cpsat.model import Model, SolveSettings
from placement.strategies.cpsat.packing import fix_float_violations, pack
from placement.strategies.cpsat.prep import EMISSION_SCALE, INT, IntArray, Prep, prepare
from placement.strategies.cpsat.relaxation import LpResult, relaxed_slots
from placement.strategies.cpsat.repair import make_feasible
from placement.strategies.cpsat.stages import (
    EmissionsStage,
    HostedStage,
    MovesStage,
    SpreadStage,
    finite,
)
from placement.strategies.cpsat.structure import Structure, build_structure
from placement.strategies.cpsat.subtrees import SPLIT_NODES, plan_by_parts


def plan_cpsat(
    problem: Problem,
    time_limit_s: float = 30.0,
    workers: int = 2,
    *,
    hint: Assignment | None = None,
    seed: int = 0,
    relative_gap: float = 0.005,
    split_nodes: int | None = SPLIT_NODES,
) -> Plan:
    """Plan the placement with CP-SAT (see :mod:`placement.strategies.cpsat` for the model).

    ``time_limit_s`` bounds the solver time of all stages together (model building and
    the greedy warm start come on top, and are small); ``workers`` is CP-SAT's thread
    count; ``hint`` is an optional placement to start from (it need not be feasible);
    stage 1 stops once within ``relative_gap`` of its bound. From ``split_nodes`` nodes
    on (``None``: never) the tree is planned part by part below the level above its
    leaves (:mod:`placement.strategies.cpsat.subtrees`); smaller problems, problems with
    carbon terms and trees with no such level are one model.

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
    _check_shapes(problem, hint)
    svc, fleet = problem.services, problem.fleet
    if svc.size == 0 or fleet.size == 0 or int(svc.demand.clip(min=0).sum()) == 0:
        return _empty_plan(problem, start, "nothing to place (no services, nodes or demand)")
    if split_nodes is not None and fleet.size >= split_nodes:
        by_parts = plan_by_parts(
            problem,
            time_limit_s=time_limit_s,
            hint=hint,
            solve_part=partial(
                plan_cpsat, workers=workers, seed=seed, relative_gap=relative_gap, split_nodes=None
            ),
        )
        if by_parts is not None:
            return by_parts
    prep = prepare(problem)
    idle_over = [problem.tree.names[d] for d in np.flatnonzero(prep.dead)]
    if not prep.ub_host.any():
        plan = _empty_plan(problem, start, "no replica fits anywhere (GPUs or power)")
        plan.stats.extra["idle_over_cap"] = idle_over
        return plan

    greedy = _greedy_floor(problem, prep)
    current = host_counts(prep, problem.current) if problem.current is not None else None
    starts = _starting_points(prep, current, hint, greedy)
    clock = _Clock(time.perf_counter(), max(0.0, float(time_limit_s)))
    ctx = _Context(
        problem=problem,
        prep=prep,
        clock=clock,
        settings=SolveSettings(workers, seed, relative_gap),
        spacing=slot_spacing(problem.grid.step_s),
        current=current,
    )
    setup = _set_up(ctx, starts)
    build_s = time.perf_counter() - start

    share1 = 0.6 if current is not None or ctx.carbon_aware else 0.8
    s1 = HostedStage(setup.model, settings=ctx.settings, spacing=ctx.spacing, start=setup.x0)
    s1.run(clock.deadline(share1 * clock.limit, since=clock.t0))
    # The secondary objectives get at most as long as the primary one took (at least a
    # second) and a fifth of the limit each: they refine, they must not dominate.
    refine_s = min(0.2 * clock.limit, max(1.0, time.perf_counter() - clock.t0))
    extra: dict[str, Any] = {
        "start": setup.start_name,
        "build_s": round(build_s, 3),
        "stage1": _hosted_report(s1, clock),
        **_setup_report(setup, prep, idle_over, greedy),
    }
    x, reports, solves = _refine(ctx, setup, s1.best, refine_s)
    extra.update(reports)
    assignment, weighted, packing = _packed(problem, prep, x, greedy)
    extra.update(packing)
    extra.update(_final_report(ctx, assignment, setup.model, solves=s1.rounds + solves))
    return Plan("cpsat", assignment, _stats(s1, setup, weighted, extra, start=start))


@dataclass(frozen=True)
class _Clock:
    """The solver time of one plan: ``limit`` seconds from ``t0`` (``perf_counter``)."""

    t0: float
    limit: float

    @property
    def end(self) -> float:
        return self.t0 + self.limit

    def left(self) -> bool:
        """Whether any solver time is left."""
        return time.perf_counter() < self.end

    def deadline(self, seconds: float, *, since: float | None = None) -> float:
        """``seconds`` after ``since`` (by default now), but never past the end."""
        began = time.perf_counter() if since is None else since
        return min(self.end, began + seconds)


@dataclass(frozen=True)
class _Context:
    """What every step of one plan shares."""

    problem: Problem
    prep: Prep
    clock: _Clock
    settings: SolveSettings
    spacing: int  # slots apart the slots added for one domain in one round must be
    current: IntArray | None  # the current placement per host

    @property
    def carbon_aware(self) -> bool:
        """Whether the emissions stage runs (carbon terms that count for something)."""
        return self.problem.carbon is not None and bool(self.prep.em.any())


@dataclass(frozen=True)
class _Greedy:
    """Greedy's plan, whether it holds for the integer model, and its weighted value."""

    plan: Plan
    ok: bool
    value: float


@dataclass(frozen=True)
class _Setup:
    """The model ready for stage 1, and what building it found."""

    st: Structure
    model: Model
    start_name: str
    x0: IntArray  # the best starting point
    initial: int  # (domain, slot) pairs the first model saw
    lp: LpResult | None
    lp_slots: int  # (domain, slot) pairs marked once the LP phase ended


def _check_shapes(problem: Problem, hint: Assignment | None) -> None:
    """Raise ``ValueError`` if the current placement or the hint is not (services, nodes)."""
    svc, fleet = problem.services, problem.fleet
    for name, given in (("problem.current", problem.current), ("hint", hint)):
        arr = given.counts if isinstance(given, Assignment) else given
        if arr is not None and arr.shape != (svc.size, fleet.size):
            raise ValueError(
                f"{name} has shape {arr.shape}; expected (services, nodes) = "
                f"({svc.size}, {fleet.size})"
            )


def _weighted_hosted(problem: Problem, assignment: Assignment) -> float:
    if problem.services.size == 0:
        return 0.0
    return float(priority_weights(problem.services.priority) @ assignment.hosted)


def _greedy_floor(problem: Problem, prep: Prep) -> _Greedy:
    """The greedy plan: the floor the result must not fall below when it is feasible."""
    from placement.strategies.greedy import plan_greedy

    greedy = plan_greedy(problem)
    ok = (
        not violations(greedy.assignment.load(problem), problem.effective_caps)[~prep.dead].any()
        and budget_left(prep, host_counts(prep, greedy.assignment.counts)) >= 0
    )
    return _Greedy(greedy, ok, _weighted_hosted(problem, greedy.assignment))


def _starting_points(
    prep: Prep, current: IntArray | None, hint: Assignment | None, greedy: _Greedy
) -> list[tuple[str, IntArray]]:
    """Named starting points, every one made feasible for the integer model, in the
    order ties are broken: the current placement (no moves), then the caller's hint,
    then greedy, then nothing."""
    starts: list[tuple[str, IntArray]] = []
    if current is not None:
        starts.append(("current", make_feasible(prep, current)))
    if hint is not None:
        starts.append(("hint", make_feasible(prep, host_counts(prep, hint.counts))))
    if greedy.ok:
        starts.append(
            ("greedy", make_feasible(prep, host_counts(prep, greedy.plan.assignment.counts)))
        )
    starts.append(("empty", np.zeros_like(prep.ub_host)))
    return starts


def _set_up(ctx: _Context, starts: list[tuple[str, IntArray]]) -> _Setup:
    """Build the model with the initial slots and those the LP phase found, and pick
    the best starting point (the rounded LP optimum among them)."""
    prep, problem = ctx.prep, ctx.problem
    st = build_structure(prep, problem.tree.parents)
    gen = np.zeros(prep.rhs.shape, dtype=bool)
    initial = initial_slots(prep, problem)
    for d, t in initial:
        gen[d, t] = True
    lp = relaxed_slots(
        prep, st, gen, spacing=ctx.spacing, deadline=ctx.clock.deadline(0.25 * ctx.clock.limit)
    )
    if lp is not None:
        starts = [*starts, ("lp", make_feasible(prep, np.floor(lp.x + 1e-6).astype(INT)))]
    start_name, x0 = max(starts, key=lambda kv: value(prep, kv[1]))
    model = Model(prep, st, problem.tree.size, current=ctx.current)
    for d, t in zip(*np.nonzero(gen), strict=True):
        model.emit_power(int(d), int(t))
    return _Setup(st, model, start_name, x0, len(initial), lp, int(gen.sum()))


def _hosted_report(s1: HostedStage, clock: _Clock) -> dict[str, Any]:
    return {
        "status": s1.status,
        "rounds": s1.rounds,
        "converged": s1.converged,
        "objective": s1.best_val,
        "bound": finite(s1.bound),
        "wall_s": round(time.perf_counter() - clock.t0, 3),
        "trace": s1.trace,
    }


def _setup_report(
    setup: _Setup, prep: Prep, idle_over: list[str], greedy: _Greedy
) -> dict[str, Any]:
    lp = setup.lp
    return {
        "initial_slot_constraints": setup.initial,
        "lp": None
        if lp is None
        else {
            "rounds": lp.rounds,
            "converged": lp.converged,
            "objective": lp.objective,
            "slot_constraints": setup.lp_slots,
            "wall_s": round(lp.wall_s, 3),
        },
        "live_domain_slots": int(prep.live.sum()),
        "idle_over_cap": idle_over,
        "greedy_objective": greedy.value,
        "fallback": None,
    }


def _refine(
    ctx: _Context, setup: _Setup, x: IntArray, refine_s: float
) -> tuple[IntArray, dict[str, Any], int]:
    """Run stages 1b, 2 and 3 after stage 1 (which placed ``x``), each if it applies and
    time is left. Returns the placement, the stages' reports and their CP-SAT solves."""
    reports: dict[str, Any] = {}
    solves = 0
    if value(ctx.prep, x) == 0:
        return x, reports, solves
    if ctx.carbon_aware and ctx.clock.left():
        se, reports["stage_emissions"] = _emissions_stage(ctx, setup, x, refine_s)
        x, solves = se.best, solves + se.rounds
    u_best: int | None = None
    if ctx.clock.left():
        t2 = time.perf_counter()
        s2 = SpreadStage(setup.model, settings=ctx.settings, spacing=ctx.spacing, start=x)
        s2.run(ctx.clock.deadline(refine_s, since=t2))
        x, u_best, solves = s2.best, s2.best_u, solves + s2.rounds
        reports["stage2"] = {
            **_stage_report(s2),
            "peak_util_permille": u_best,
            "wall_s": round(time.perf_counter() - t2, 3),
        }
    if ctx.current is not None and ctx.clock.left():
        t3 = time.perf_counter()
        u_cap = u_best if u_best is not None else peak_util(ctx.prep, x)
        s3 = MovesStage(
            setup.model,
            settings=ctx.settings,
            spacing=ctx.spacing,
            start=x,
            u_cap=u_cap,
            current=ctx.current,
        )
        s3.run(ctx.clock.deadline(refine_s, since=t3))
        x, solves = s3.best, solves + s3.rounds
        reports["stage3"] = {
            **_stage_report(s3),
            "moves": moves(x, ctx.current),
            "wall_s": round(time.perf_counter() - t3, 3),
        }
    return x, reports, solves


def _stage_report(stage: SpreadStage | MovesStage | EmissionsStage) -> dict[str, Any]:
    return {"status": stage.status, "rounds": stage.rounds, "converged": stage.converged}


def _emissions_stage(
    ctx: _Context, setup: _Setup, x: IntArray, refine_s: float
) -> tuple[EmissionsStage, dict[str, Any]]:
    """Stage 1b from ``x``: its own LP slot generation, then CP-SAT rounds."""
    prep, model = ctx.prep, setup.model
    te = time.perf_counter()
    # The LP relaxation finds most slots the greener placement needs, cheaply.
    # Emissions are what the caller asked to be counted: this stage gets at least
    # 30% of the limit even when stage 1 was quick, the LP at most 60% of that.
    stage_end = ctx.clock.deadline(max(refine_s, 0.3 * ctx.clock.limit), since=te)
    gen_e = model.gen_power.copy()
    lp_e = relaxed_slots(
        prep,
        setup.st,
        gen_e,
        spacing=ctx.spacing,
        deadline=te + 0.6 * (stage_end - te),
        minimise=model.em_terms,
        floor=value(prep, x),
    )
    # Where the start is nearly binding, moving load in breaks the cap first: a
    # greener placement shifts load between sites, so those slots go in too.
    mark_near_binding(prep, load(prep, x), gen_e, spacing=ctx.spacing)
    for d, t in zip(*np.nonzero(gen_e & ~model.gen_power), strict=True):
        model.emit_power(int(d), int(t))
    se = EmissionsStage(model, settings=ctx.settings, spacing=ctx.spacing, start=x)
    se.run(stage_end)
    return se, {
        **_stage_report(se),
        "start_kg": round(emitted(prep, x) / EMISSION_SCALE, 3),
        "lp_rounds": None if lp_e is None else lp_e.rounds,
        "lp_s": None if lp_e is None else round(lp_e.wall_s, 3),
        "kg": round(se.best_e / EMISSION_SCALE, 3),
        "wall_s": round(time.perf_counter() - te, 3),
    }


def _packed(
    problem: Problem, prep: Prep, x: IntArray, greedy: _Greedy
) -> tuple[Assignment, float, dict[str, Any]]:
    """``x`` packed onto nodes (greedy's plan if that hosts less), its weighted value,
    and the report: replicas that did not fit, and whether greedy was returned."""
    assignment, dropped = pack(problem, prep, x, current=problem.current)
    assignment = fix_float_violations(problem, assignment, prep.dead)
    weighted = _weighted_hosted(problem, assignment)
    report: dict[str, Any] = {"unpacked": dropped, "fallback": None}
    if greedy.ok and weighted < greedy.value:
        assignment, weighted = greedy.plan.assignment, greedy.value
        report["fallback"] = "greedy: the CP-SAT placement hosted less after packing"
    return assignment, weighted, report


def _final_report(
    ctx: _Context, assignment: Assignment, model: Model, *, solves: int
) -> dict[str, Any]:
    """What the returned assignment hosts, its peak utilisation, moves and emissions."""
    x_final = host_counts(ctx.prep, assignment.counts)
    report: dict[str, Any] = {
        "hosted": int(assignment.hosted.sum()),
        "peak_util_permille": peak_util(ctx.prep, x_final),
        "moves": moves(x_final, ctx.current),
        "util_constraints": int(model.gen_util.sum()),
    }
    if ctx.problem.carbon is not None:
        from placement.carbon.emissions import plan_emissions

        report["emissions"] = plan_emissions(ctx.problem, assignment).as_dict()
    report["solves"] = solves
    return report


def _stats(
    s1: HostedStage, setup: _Setup, weighted: float, extra: dict[str, Any], *, start: float
) -> SolverStats:
    """The plan's stats: the bound is stage 1's (or the converged LP's, if lower), the
    status OPTIMAL only with the gap closed."""
    value1 = s1.best_val
    lp = setup.lp
    bound_value = s1.bound
    if lp is not None and lp.converged:  # the LP optimum on all slots bounds it too
        bound_value = min(bound_value, math.floor(lp.objective + 1e-6))
    bound = max(bound_value, float(value1)) if math.isfinite(bound_value) else None
    if bound is not None and weighted > bound:
        # Only possible through the greedy fallback: greedy is checked in floats, the
        # bound holds for the conservatively rounded integer model.
        extra["bound_note"] = f"integer-model bound {bound:g} raised to the greedy value"
        bound = weighted
    gap = None if bound is None else (bound - weighted) / max(1.0, abs(bound))
    # CP-SAT says OPTIMAL once the gap limit is met; only a closed gap is optimal here.
    proved = s1.converged and bound is not None and bound <= value1 + 1e-6
    if not s1.converged:
        extra["note"] = (
            "stage 1 stopped (time limit) before a solution passed the full slot check "
            "or came within the gap; the best repaired feasible placement was kept"
        )
    return SolverStats(
        status="OPTIMAL" if proved else "FEASIBLE",
        objective=weighted,
        bound=bound,
        gap=gap,
        wall_s=time.perf_counter() - start,
        iterations=s1.rounds + (lp.rounds if lp is not None else 0),
        slot_constraints=int(setup.model.gen_power.sum()),
        extra=extra,
    )


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
