"""The rich tables the commands print."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from rich.table import Table
from rich.text import Text

from placement.carbon.emissions import PlanEmissions
from placement.cluster_run import (
    ClusterRun,
    ReplayOutcome,
)
from placement.metrics import Metrics
from placement.problem import Problem
from placement.strategies import Plan
from powercap.plans import BASELINES, describe_problem, gains_of
from powercap.report import domain_order

if TYPE_CHECKING:
    from placement.variants import WhatIf


# Below this many domains the per-domain table lists them all; above it, every domain
# with children and the most loaded leaves only (unless --all-domains).
ALL_DOMAINS_UP_TO = 30


TOP_LEAVES = 10


# A FailedScheduling message lists every node group's reason; the table shows its start.
REASON_CHARS = 160


def pct(value: float | None, signed: bool = True) -> str:
    if value is None:
        return "—"
    return f"{value:+.1%}" if signed else f"{value:.1%}"


def ratio_text(ratio: float) -> Text:
    style = "bold red" if ratio > 1.0 + 1e-9 else "yellow" if ratio >= 0.95 else "green"
    return Text(f"{ratio:.1%}", style=style)


def violations_text(count: int) -> Text:
    return Text(str(count), style="bold red" if count else "green")


def gain_text(value: float | None) -> Text:
    if value is None:
        return Text("—", style="dim")
    return Text(pct(value), style="green" if value > 0 else "red" if value < 0 else "")


def kw(watts: float) -> str:
    return f"{watts / 1000:,.1f}"


def solver_text(plan: Plan) -> str:
    s = plan.stats
    parts = [s.status]
    if s.objective is not None:
        parts.append(f"objective {s.objective:,.0f}")
    if s.bound is not None:
        parts.append(f"bound {s.bound:,.0f}")
    if s.gap is not None:
        parts.append(f"gap {s.gap:.2%}")
    parts.append(f"{s.wall_s:.2f} s")
    if s.iterations:
        parts.append(f"{s.iterations} rounds, {s.slot_constraints} slot constraints")
    fallback = s.extra.get("fallback")
    if fallback:
        parts.append(f"fallback: {fallback}")
    return ", ".join(parts)


def budget_text(e: PlanEmissions, short: bool = False) -> Text:
    if e.budget_kg is None or e.budget_used_kg is None:
        return Text("—", style="dim")
    margin = e.budget_kg - e.budget_used_kg
    if e.holds:
        return Text(f"{margin:,.1f} left" if short else f"holds, {margin:,.1f} kg left", "green")
    return Text(f"over {-margin:,.1f}" if short else f"over by {-margin:,.1f} kg", "bold red")


def summary_table(
    problem: Problem,
    plan: Plan,
    metrics: dict[str, Metrics],
    *,
    emissions: PlanEmissions | None = None,
) -> Table:
    m = metrics[plan.strategy]
    g = gains_of(plan.strategy, metrics)
    table = Table(
        title=f"[bold]{problem.name}[/] — {plan.strategy}",
        caption=describe_problem(problem),
        show_header=False,
        title_justify="left",
    )
    table.add_column(style="bold cyan")
    table.add_column()
    share = m.hosted_total / m.demand_total if m.demand_total else 1.0
    table.add_row("hosted", f"{m.hosted_total:,} / {m.demand_total:,} replicas ({share:.1%})")
    gains_line = Text()
    for i, base in enumerate(BASELINES):
        if i:
            gains_line.append(", ")
        gains_line.append_text(gain_text(g.get(f"vs_{base}")))
        gains_line.append(f" vs {base}")
    table.add_row("gain", gains_line)
    unplaced = sorted(((n, k) for n, k in m.unplaced.items() if k > 0), key=lambda x: -x[1])
    detail = ", ".join(f"{n} {k}" for n, k in unplaced[:4])
    more = f", … {len(unplaced) - 4} more services" if len(unplaced) > 4 else ""
    table.add_row(
        "unplaced",
        f"{m.unplaced_total:,}" + (f" ({detail}{more})" if unplaced else ""),
    )
    violations = violations_text(m.violations)
    if m.violating_domains:
        violations.append(f" domain-slots over cap in {', '.join(m.violating_domains[:5])}")
    table.add_row("violations", violations)
    table.add_row("worst peak/cap", ratio_text(m.worst_peak_over_cap))
    table.add_row("stranded power", f"{kw(m.stranded_w)} kW (leaf headroom at their peaks)")
    table.add_row("energy slack", f"{m.energy_slack_kwh:,.0f} kWh per period (root)")
    table.add_row("asynchrony", f"{m.asynchrony:.3f} (root; 1 = every replica peaks together)")
    table.add_row("GPUs", f"{m.gpus_used:,} / {m.gpus_total:,} in use")
    if emissions is not None and problem.carbon is not None:
        table.add_row(
            "emissions",
            f"{emissions.site_kg:,.1f} kg CO2e over {problem.carbon.label or 'the window'} "
            f"(idle {emissions.idle_kg[0]:,.1f} kg)",
        )
        if emissions.budget_domain is not None:
            budget = Text(f"{emissions.budget_kg:,.1f} kg for {emissions.budget_domain}: ")
            budget.append_text(budget_text(emissions))
            table.add_row("emission budget", budget)
    table.add_row("solver", solver_text(plan))
    return table


def domain_table(problem: Problem, m: Metrics, all_domains: bool) -> Table:
    tree = problem.tree
    order = domain_order(problem)
    hidden = 0
    if not all_domains and tree.size > ALL_DOMAINS_UP_TO:
        leaves = set(tree.leaves.tolist())
        loaded = sorted(leaves, key=lambda d: -m.domains[d].peak_over_cap)[:TOP_LEAVES]
        keep = (set(range(tree.size)) - leaves) | set(loaded)
        hidden = tree.size - len(keep)
        order = [d for d in order if d in keep]
    caption = (
        f"{hidden} less loaded leaf domains not shown (--all-domains lists them)"
        if hidden
        else None
    )
    table = Table(title="per domain", title_justify="left", caption=caption)
    table.add_column("domain")
    table.add_column("replicas", justify="right")
    table.add_column("peak kW", justify="right")
    table.add_column("cap kW", justify="right")
    table.add_column("at", justify="center")
    table.add_column("peak/cap", justify="right")
    table.add_column("stranded kW", justify="right")
    table.add_column("asynchrony", justify="right")
    for d in order:
        dm = m.domains[d]
        table.add_row(
            "  " * dm.level + dm.domain,
            str(dm.replicas),
            kw(dm.peak_w),
            kw(dm.cap_at_peak_w),
            dm.peak_slot,
            ratio_text(dm.peak_over_cap),
            kw(dm.stranded_w),
            f"{dm.asynchrony:.2f}",
        )
    return table


def compare_table(
    problem: Problem,
    plans: dict[str, Plan],
    metrics: dict[str, Metrics],
    *,
    emissions: dict[str, PlanEmissions] | None = None,
) -> Table:
    table = Table(
        title=f"[bold]{problem.name}[/] — strategies compared",
        caption=describe_problem(problem),
        title_justify="left",
    )
    for column, justify in (
        ("strategy", "left"),
        ("hosted", "right"),
        ("GPUs used", "right"),
        ("vs nameplate", "right"),
        ("vs peak-sum", "right"),
        ("violations", "right"),
        ("worst peak/cap", "right"),
        ("stranded kW", "right"),
        ("solve s", "right"),
        ("gap", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    if emissions:
        table.add_column("kg CO2e", justify="right")
        if any(e.budget_kg is not None for e in emissions.values()):
            table.add_column("budget kg", justify="right")
    demand = next(iter(metrics.values())).demand_total
    best = max(metrics[n].priority_weighted_hosted for n in plans)
    for name, plan in plans.items():
        m = metrics[name]
        g = gains_of(name, metrics)
        carbon: list[str | Text] = []
        if emissions:
            e = emissions[name]
            carbon.append(f"{e.site_kg:,.1f}")
            if e.budget_kg is not None:
                carbon.append(budget_text(e, short=True))
        table.add_row(
            Text(name, style="bold" if m.priority_weighted_hosted == best else ""),
            f"{m.hosted_total:,} / {demand:,}",
            f"{m.gpus_used:,}",
            gain_text(g.get("vs_nameplate")),
            gain_text(g.get("vs_peak-sum")),
            violations_text(m.violations),
            ratio_text(m.worst_peak_over_cap),
            kw(m.stranded_w),
            f"{plan.stats.wall_s:.2f}",
            "—" if plan.stats.gap is None else f"{plan.stats.gap:.2%}",
            *carbon,
        )
    return table


def provisioning_table(trades: dict[str, dict[str, Any]]) -> Table:
    """Uncapped vs capped provisioning per strategy: hosted replicas and
    throughput-weighted hosted (see :func:`powercap.plans.provisioning_json`)."""
    first = next(iter(trades.values()))["capped"]
    limits = first["limits"]
    shown = sorted(set(limits.values()))
    caption = (
        f"{len(limits)} services at {', '.join(f'{f:.3g}' for f in shown[:4])} of the default "
        f"GPU limit; throughput in {first['unit']} (an uncapped replica = 1)"
        if first["unit"] == "replicas"
        else f"{len(limits)} services at a GPU power limit; throughput in {first['unit']}"
    )
    table = Table(title="provisioning at a power limit", title_justify="left", caption=caption)
    for column, justify in (
        ("strategy", "left"),
        ("hosted uncapped", "right"),
        ("hosted capped", "right"),
        ("throughput uncapped", "right"),
        ("throughput capped", "right"),
        ("change", "right"),
        ("violations", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for name, t in trades.items():
        free, capped = t["uncapped"], t["capped"]
        change = (
            capped["throughputHosted"] / free["throughputHosted"] - 1.0
            if free["throughputHosted"]
            else None
        )
        table.add_row(
            name,
            f"{free['hosted']:,}",
            f"{capped['hosted']:,}",
            f"{free['throughputHosted']:,.1f}",
            f"{capped['throughputHosted']:,.1f}",
            gain_text(change),
            violations_text(free["violations"] + capped["violations"]),
        )
    return table


def replay_table(name: str, r: ReplayOutcome) -> Table:
    w = r.window
    controller = "on" if w.get("controller") else "off"
    table = Table(
        title=f"[bold]{name}[/] — replay day {w.get('day', 0):g}, "
        f"{w.get('duration_s', 0) / 3600:g} h at speed {w.get('speed', 0):g}, "
        f"controller {controller}",
        title_justify="left",
    )
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("breach domain-minutes", f"{r.breach_domain_minutes:,.1f}")
    worst = sorted(r.domain_breach_minutes.items(), key=lambda kv: -kv[1])[:5]
    for domain, minutes in worst:
        table.add_row(f"  {domain}", f"{minutes:,.1f}")
    actions = ", ".join(f"{k} {v}" for k, v in r.actions.items()) or "none"
    table.add_row("actions", actions)
    evicted = ", ".join(f"priority {k}: {v}" for k, v in r.evicted_by_priority.items()) or "none"
    table.add_row("evicted", evicted)
    if w.get("power_limits"):
        table.add_row("throughput lost to power limits", f"{r.throughput_lost_fraction:.1%}")
    return table


def live_line(name: str, run: ClusterRun, m: Metrics) -> Text:
    rate = run.throughput_pods_per_s
    line = Text.assemble(
        (name, "bold"),
        f": {m.hosted_total:,} pods bound in {run.schedule_s:.1f} s",
        f" ({rate:,.1f} pods/s)" if rate is not None else "",
        f", {len(run.pending):,} Pending",
    )
    summary = pending_summary(run, limit=1)
    if summary["reasons"]:
        message = summary["reasons"][0]["message"]
        if len(message) > REASON_CHARS:
            message = message[: REASON_CHARS - 1] + "…"
        line.append(f"; most say: {message}", style="dim")
    return line


def whatif_table(
    problem: Problem,
    changed: Problem,
    change: WhatIf,
    *,
    strategy: str,
    before: tuple[dict[str, Plan], dict[str, Metrics]],
    after: tuple[dict[str, Plan], dict[str, Metrics]],
) -> Table:
    table = Table(
        title=f"[bold]{problem.name}[/] — what if {change.describe()} ({strategy})",
        title_justify="left",
    )
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("change", justify="right")
    _fleet_rows(table, problem, changed)
    _outcome_rows(table, strategy, before[1], after[1])
    table.add_row(
        "solver",
        before[0][strategy].stats.status,
        after[0][strategy].stats.status,
        "",
    )
    return table


def _change_row(
    table: Table, label: str, before: float, after: float, fmt: str = "{:,.0f}", good: int = 0
) -> None:
    """A before/after row with the difference; ``good`` is the sign of a welcome change
    (0: an input or neither, uncoloured)."""
    delta = after - before
    style = "" if abs(delta) < 1e-9 or not good else "green" if delta * good > 0 else "red"
    sign = "+" if delta > 0 else ""
    table.add_row(
        label, fmt.format(before), fmt.format(after), Text(sign + fmt.format(delta), style=style)
    )


def _fleet_rows(table: Table, problem: Problem, changed: Problem) -> None:
    """Nodes, GPUs and the root's cap, before and after the change."""
    _change_row(table, "nodes", problem.fleet.size, changed.fleet.size)
    _change_row(table, "GPUs", int(problem.fleet.gpus.sum()), int(changed.fleet.gpus.sum()))
    root = int(np.flatnonzero(problem.tree.parents < 0)[0])
    _change_row(
        table,
        "root cap kW (max)",
        float(problem.tree.caps[root].max()) / 1000,
        float(changed.tree.caps[root].max()) / 1000,
        "{:,.1f}",
    )


def _outcome_rows(
    table: Table, strategy: str, before: dict[str, Metrics], after: dict[str, Metrics]
) -> None:
    """``strategy``'s demand, placement, gains and power, before and after the change."""
    mb, ma = before[strategy], after[strategy]
    gb, ga = gains_of(strategy, before), gains_of(strategy, after)
    _change_row(table, "demand", mb.demand_total, ma.demand_total)
    _change_row(table, "hosted", mb.hosted_total, ma.hosted_total, good=1)
    _change_row(table, "GPUs used", mb.gpus_used, ma.gpus_used, good=1)
    _change_row(table, "unplaced", mb.unplaced_total, ma.unplaced_total, good=-1)
    for base in BASELINES:
        table.add_row(
            f"gain vs {base}",
            gain_text(gb.get(f"vs_{base}")),
            gain_text(ga.get(f"vs_{base}")),
            "",
        )
    _change_row(table, "violations", mb.violations, ma.violations, good=-1)
    table.add_row(
        "worst peak/cap",
        ratio_text(mb.worst_peak_over_cap),
        ratio_text(ma.worst_peak_over_cap),
        "",
    )
    _change_row(
        table, "stranded kW", mb.stranded_w / 1000, ma.stranded_w / 1000, "{:,.1f}", good=-1
    )
    _change_row(table, "energy slack kWh", mb.energy_slack_kwh, ma.energy_slack_kwh)
    _change_row(table, "asynchrony", mb.asynchrony, ma.asynchrony, "{:.3f}")


def pending_summary(run: ClusterRun, limit: int = 3) -> dict[str, Any]:
    """How many pods were left Pending and the distinct reasons the scheduler gave."""
    reasons: dict[str, int] = {}
    for message in run.pending.values():
        reasons[message] = reasons.get(message, 0) + 1
    top = sorted(reasons.items(), key=lambda kv: -kv[1])[:limit]
    return {"count": len(run.pending), "reasons": [{"pods": n, "message": m} for m, n in top]}
