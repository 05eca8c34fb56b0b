"""Carbon-aware planning on real grid intensity: emissions, EUA cost and demand served.

    python -m benchmarks.carbon                          # 12 days of 2020, both demand levels
    python -m benchmarks.carbon --demand-scales 1.0 --days 2020-01-15 2020-07-15
    python -m benchmarks.carbon --one-grid gb            # every site on the GB grid

Scenario: the ServeGen scenario of :mod:`benchmarks.quality` (40 services from the m-large
and m-mid clients, H100 / Llama-3-70B TP4 power curve, 8×H100 nodes at 2 kW idle, racks
capped at half their nameplate) on 3 rows × 10 racks × 8 nodes, where each row is a site
on its own grid: ``gb``, ``fr`` and ``de`` (intensity from dos-group/lets-wait-awhile,
Wiesner et al., Middleware'21). The root, ``fleet``, only aggregates the three sites: its
cap is the sum of theirs, so it never binds. Two demand levels: ×1 (power-bound: every
site is full, so at equal hosted replicas only the service mix can change) and ×0.3
(spare power: where replicas go is free, so a carbon-aware plan fills the cleanest site
first).

(a) Per day: a carbon-oblivious cpsat plan (no intensity; one plan, priced every day) and
a carbon-aware one (cpsat with the day's intensity per site: the emissions tier right
after priority-weighted hosted), placing exactly the replicas the oblivious plan hosts.
Among placements that tie on every objective but emissions, the oblivious plan is an
arbitrary pick, so the dirtiest placement of the same replicas (cpsat minimising under
the intensity flipped, max − I: at fixed replicas the energy is fixed) is shown too: an
oblivious planner lands anywhere between it and the aware plan. Emissions in t CO2e
over the day, idle included, and their cost at that day's EUA settle (OSUKED/ETS-Watch
``market_prices.csv``, carried forward over closed days).

(b) The same days under an emission budget of 100/90/80/70% of the oblivious plan's
emissions (for the whole fleet, idle included): replicas hosted and priority-weighted,
cpsat and greedy (the extender's rule, which checks the budget one replica at a time).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import numpy as np

from placement.carbon.emissions import domain_intensity, plan_emissions, with_carbon
from placement.carbon.intensity import IntensitySeries, on_grid
from placement.carbon.intensity_csv import read_intensity_csv
from placement.carbon.market import EuaPrice
from placement.carbon.price_csv import read_eua_csv
from placement.metrics import priority_weights
from placement.problem import CarbonTerms, Problem
from placement.scenario.building import problem_from_spec
from placement.scenario.servegen import Topology, build_servegen
from placement.strategies import Plan, run_strategy
from placement.tree import PowerTree

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FOLDERS = ("language/m-large", "language/m-mid")
GRIDS = {"gb": "gb_ci.csv", "fr": "fr_ci.csv", "de": "ger_ci.csv"}
RENAME = {"site": "fleet", "row-1": "gb", "row-2": "fr", "row-3": "de"}
DAYS = tuple(date(2020, m, 15) for m in range(1, 13))
BUDGETS = (1.0, 0.9, 0.8, 0.7)
SWEEP_DAYS = (date(2020, 1, 15), date(2020, 7, 15))


def three_sites(data: Path, services: int, seed: int, *, demand_scale: float) -> Problem:
    """The quality scenario on 3 rows, each row renamed to a site on its own grid."""
    built = build_servegen(
        [data / "servegen" / f for f in FOLDERS],
        services=services,
        train_days=7,
        topology=Topology(rows=3),
        seed=seed,
        demand_scale=demand_scale,
        name=f"servegen-3sites-x{demand_scale:g}",
    )
    problem = problem_from_spec(built.spec)
    tree = problem.tree
    names = [RENAME.get(n, n) for n in tree.names]
    parents = [None if p < 0 else names[p] for p in tree.parents]
    caps = np.array(tree.caps)
    root = int(np.flatnonzero(tree.parents < 0)[0])
    # The sites are separate datacenters: the fleet root aggregates, it does not cap.
    caps[root] = caps[tree.parents == root].sum(axis=0)
    renamed = PowerTree.build(names, parents, caps)
    if renamed.names != tuple(names):  # the fleet's domain indices rely on the order
        raise RuntimeError("renaming reordered the tree")
    return replace(problem, tree=renamed, name=built.spec.metadata.name)


@dataclass(frozen=True)
class Outcome:
    hosted: int
    weighted: float
    kg: float
    eur: float


def outcome(problem: Problem, plan: Plan, price: float) -> Outcome:
    e = plan_emissions(problem, plan.assignment)
    weights = priority_weights(problem.services.priority)
    hosted = plan.assignment.hosted
    return Outcome(int(hosted.sum()), float(weights @ hosted), e.site_kg, e.site_kg / 1000 * price)


def day_terms(
    problem: Problem, series: dict[str, IntensitySeries], day: date, *, one_grid: str | None
) -> CarbonTerms:
    rows = {
        site: on_grid(series[one_grid or site], problem.grid, day) for site in ("gb", "fr", "de")
    }
    return CarbonTerms(domain_intensity(problem, rows), label=str(day))


def run(
    problem: Problem,
    series: dict[str, IntensitySeries],
    price: EuaPrice,
    *,
    days: Sequence[date],
    budgets: Sequence[float],
    sweep_days: Sequence[date],
    one_grid: str | None,
    time_limit_s: float,
    workers: int,
) -> None:
    opts = {"time_limit_s": time_limit_s, "workers": workers}
    svc = problem.services
    print(
        f"{problem.name}: {svc.size} services, demand {int(svc.demand.sum())} replicas on "
        f"{problem.fleet.size} nodes; sites "
        + ", ".join(
            f"{n} {problem.tree.caps[problem.tree.index[n], 0] / 1000:,.0f} kW"
            for n in ("gb", "fr", "de")
        )
        + (f"; every site on the {one_grid} grid" if one_grid else "")
    )
    began = time.perf_counter()
    oblivious = run_strategy("cpsat", problem, **opts)
    print(
        f"oblivious cpsat: {int(oblivious.assignment.hosted.sum())} hosted, gap "
        f"{oblivious.stats.gap:.2%}, {time.perf_counter() - began:.1f} s"
    )
    hosted = oblivious.assignment.hosted.astype(np.int64)
    served = replace(problem, services=replace(svc, demand=hosted), current=None)
    head = (
        f"{'day':>10}  {'EUR/t':>6}  {'g/kWh gb/fr/de':>15}  {'hosted o/a':>10}  "
        f"{'weighted o/a':>12}  {'t oblivious':>11}  {'t aware':>8}  {'saved':>6}  "
        f"{'t dirtiest':>10}  {'EUR obliv.':>10}  {'EUR aware':>9}  {'by site o':>11}  "
        f"{'by site a':>11}  {'wall s':>6}"
    )
    print(head)
    totals = np.zeros(5)
    sweep: dict[float, list[tuple[Outcome, Outcome, float]]] = {b: [] for b in budgets}
    for day in days:
        terms = day_terms(problem, series, day, one_grid=one_grid)
        priced = with_carbon(problem, terms)
        eur_t = float(price.on(np.array([day], dtype="datetime64[D]"))[0])
        t0 = time.perf_counter()
        # Same served demand: the aware plan places exactly the replicas the oblivious
        # plan hosts (demand = those counts; the oblivious plan is a feasible start that
        # hosts all of it), so only where they run can differ.
        aware_plan = run_strategy(
            "cpsat", with_carbon(served, terms), hint=oblivious.assignment, **opts
        )
        aware_s = time.perf_counter() - t0
        # The other end of the range an oblivious planner can land in: the same replicas
        # placed to emit the most. At fixed per-service counts the energy is fixed, so
        # least emissions under (max − I) is most emissions under I.
        flipped = replace(terms, intensity=terms.intensity.max() - terms.intensity)
        dirtiest = run_strategy(
            "cpsat", with_carbon(served, flipped), hint=oblivious.assignment, **opts
        )
        o = outcome(priced, oblivious, eur_t)
        a = outcome(priced, aware_plan, eur_t)
        w = outcome(priced, dirtiest, eur_t)
        totals += (o.kg, a.kg, o.eur, a.eur, w.kg)
        means = "/".join(
            f"{terms.intensity[problem.tree.index[s]].mean():.0f}" for s in ("gb", "fr", "de")
        )
        print(
            f"{day!s:>10}  {eur_t:6.2f}  {means:>15}  {o.hosted:>4}/{a.hosted:<5}  "
            f"{o.weighted:>5.0f}/{a.weighted:<6.0f}  {o.kg / 1000:11.3f}  {a.kg / 1000:8.3f}  "
            f"{(o.kg - a.kg) / o.kg:6.2%}  {w.kg / 1000:10.3f}  {o.eur:10.2f}  {a.eur:9.2f}  "
            f"{_by_site(priced, oblivious):>11}  {_by_site(priced, aware_plan):>11}  "
            f"{aware_s:6.1f}"
        )
        idle = float(plan_emissions(priced, oblivious.assignment).idle_kg[0])
        if day not in sweep_days:
            continue
        for fraction in budgets:
            budget = max(idle, fraction * o.kg)
            bounded = with_carbon(problem, replace(terms, budget_kg=budget))
            c = outcome(bounded, run_strategy("cpsat", bounded, **opts), eur_t)
            # greedy: the extender's rule, admitting one replica at a time under the budget
            g = outcome(bounded, run_strategy("greedy", bounded), eur_t)
            sweep[fraction].append((c, g, budget))
    ob, aw, ob_eur, aw_eur, dirty = totals
    print(
        f"{len(days)} days: oblivious {ob / 1000:.3f} t, aware {aw / 1000:.3f} t, saved "
        f"{(ob - aw) / 1000:.3f} t ({(ob - aw) / ob:.2%}); EUR {ob_eur:,.2f} vs {aw_eur:,.2f} "
        f"(saved {ob_eur - aw_eur:,.2f}); the dirtiest placement of the same replicas "
        f"{dirty / 1000:.3f} t (aware {(dirty - aw) / dirty:.2%} below it)"
    )
    if not budgets or not any(sweep.values()):
        return
    print(
        f"{'budget':>8}  {'t budget':>9}  {'cpsat hosted':>12}  {'cpsat weighted':>14}  "
        f"{'t emitted':>9}  {'greedy hosted':>13}  {'greedy weighted':>15}  {'held':>4}"
    )
    for fraction, runs in sweep.items():
        held = all(c.kg <= b + 1e-6 and g.kg <= b + 1e-6 for c, g, b in runs)
        n = len(runs)
        print(
            f"{fraction:8.0%}  {sum(b for _, _, b in runs) / 1000:9.3f}  "
            f"{sum(c.hosted for c, _, _ in runs) / n:12.1f}  "
            f"{sum(c.weighted for c, _, _ in runs) / n:14.1f}  "
            f"{sum(c.kg for c, _, _ in runs) / 1000:9.3f}  "
            f"{sum(g.hosted for _, g, _ in runs) / n:13.1f}  "
            f"{sum(g.weighted for _, g, _ in runs) / n:15.1f}  {'yes' if held else 'NO':>4}"
        )


def _by_site(problem: Problem, plan: Plan) -> str:
    per = plan.assignment.by_domain(problem).sum(axis=0)
    return "/".join(str(int(per[problem.tree.index[s]])) for s in ("gb", "fr", "de"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=SHARED, help="the shared data folder")
    parser.add_argument("--services", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demand-scales", type=float, nargs="+", default=[1.0, 0.3])
    parser.add_argument("--days", type=date.fromisoformat, nargs="+", default=list(DAYS))
    parser.add_argument(
        "--budgets", type=float, nargs="*", default=list(BUDGETS), help="fractions of oblivious"
    )
    parser.add_argument(
        "--budget-days",
        type=date.fromisoformat,
        nargs="*",
        default=list(SWEEP_DAYS),
        help="days of --days the budget sweep runs on",
    )
    parser.add_argument("--one-grid", choices=sorted(GRIDS), help="put every site on one grid")
    parser.add_argument("--time-limit", type=float, default=30.0, help="CP-SAT limit, seconds")
    parser.add_argument("--workers", type=int, default=2, help="CP-SAT threads")
    args = parser.parse_args(argv)
    needed = [args.data / "servegen" / f for f in FOLDERS]
    needed += [args.data / "carbon-intensity" / f for f in GRIDS.values()]
    needed.append(args.data / "eua-prices" / "market_prices.csv")
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        parser.error(f"shared data not found: {', '.join(missing)} (see shared/data/README.md)")
    series = {s: read_intensity_csv(args.data / "carbon-intensity" / f) for s, f in GRIDS.items()}
    price = read_eua_csv(args.data / "eua-prices" / "market_prices.csv")
    print(
        f"carbon: {len(args.days)} days ({args.days[0]} … {args.days[-1]}), budgets "
        f"{', '.join(f'{b:.0%}' for b in args.budgets)} of oblivious; cpsat "
        f"{args.time_limit:g} s, {args.workers} workers; {os.cpu_count()} CPUs"
    )
    for scale in args.demand_scales:
        problem = three_sites(args.data, args.services, args.seed, demand_scale=scale)
        run(
            problem,
            series,
            price,
            days=args.days,
            budgets=args.budgets,
            sweep_days=args.budget_days,
            one_grid=args.one_grid,
            time_limit_s=args.time_limit,
            workers=args.workers,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
