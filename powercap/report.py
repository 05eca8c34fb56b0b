"""The report of ``--report DIR`` (``plan``, ``compare``, ``whatif --kwok``): one
self-contained ``index.html`` and the PNG charts it shows, written by :func:`write_report`.

Everything numeric comes from :mod:`placement.metrics` and the assignment's own load;
this module only lays it out. Charts are drawn on bare :class:`matplotlib.figure.Figure`
objects with the Agg canvas, never through ``pyplot``, so writing a report touches no
global plotting state and works without a display. The report of ``powercap carbon
report`` is :mod:`powercap.carbon_report`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from placement.metrics import Metrics, gains
from placement.problem import Problem
from placement.strategies import Plan

if TYPE_CHECKING:
    # matplotlib is imported when a chart is drawn, not with this module: the CLI
    # imports it for the domain order and should not pay for matplotlib on every run.
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap, Normalize
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

# Charts need matplotlib, the optional extra `report`; the container image leaves it out.
REPORT_INSTALL = "pip install 'powercap-scheduler[report]'"

BASELINES = ("nameplate", "peak-sum")
# Past this many domains a heat-map row per domain gets too thin to label.
LABEL_ALL_DOMAINS = 40
# Services drawn as their own band in a stacked chart; the rest share one "other" band.
STACK_SERVICES = 9
# The most loaded leaf domains that get a profile chart of their own.
TOP_LEAVES = 4
# Rows (depth-1 domains) that get a profile chart; more would bury the page.
MAX_ROWS = 12
DPI = 110

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #1d2433; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 1px solid
#d8dde6; padding-bottom: .2em; } .muted { color: #6b7385; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-variant-numeric: tabular-nums; }
th, td { padding: .25em .7em; border-bottom: 1px solid #e6e9ef; text-align: right; }
th { background: #f3f5f8; } td:first-child, th:first-child { text-align: left; }
.ok { color: #1a7f37; } .warn { color: #9a6700; } .bad { color: #cf222e; font-weight: 600; }
.focus { background: #fff8e1; } img { max-width: 100%; border: 1px solid #e6e9ef;
margin: .4em 0; } .grid { display: grid; grid-template-columns: repeat(auto-fill,
minmax(520px, 1fr)); gap: .6em; }
"""


@dataclass(frozen=True)
class _Chart:
    file: str
    caption: str


def best_strategy(plans: dict[str, Plan], metrics: dict[str, Metrics]) -> str:
    """The strategy a report focuses on: ``cpsat`` when present, else the one hosting the
    most priority-weighted replicas (fewest violations on a tie)."""
    if "cpsat" in plans:
        return "cpsat"
    return max(plans, key=lambda n: (metrics[n].priority_weighted_hosted, -metrics[n].violations))


def domain_order(problem: Problem) -> list[int]:
    """Domain indices depth first — each row followed by its racks — siblings by name.

    The tree itself is stored level by level (parents first), which reads badly in a
    table; this is the order people expect.
    """
    tree = problem.tree
    children: dict[int, list[int]] = {d: [] for d in range(-1, tree.size)}
    for d in range(tree.size):
        children[int(tree.parents[d])].append(d)
    order: list[int] = []
    stack = sorted(children[-1], key=lambda d: tree.names[d], reverse=True)
    while stack:
        d = stack.pop()
        order.append(d)
        stack.extend(sorted(children[d], key=lambda c: tree.names[c], reverse=True))
    return order


def strategy_gains(name: str, metrics: dict[str, Metrics]) -> dict[str, float | None]:
    """Gains of strategy ``name`` over whichever baselines ``metrics`` holds."""
    baselines = {b: metrics[b] for b in BASELINES if b in metrics}
    return gains(metrics[name], baselines)


def write_report(
    directory: Path | str,
    problem: Problem,
    plans: dict[str, Plan],
    *,
    metrics: dict[str, Metrics],
    focus: str | None = None,
) -> Path:
    """Write ``index.html`` and its PNG charts into ``directory`` (created if missing).

    ``plans`` and ``metrics`` are keyed by strategy name and must hold the same names;
    ``focus`` picks the strategy whose per-domain profiles are drawn (default:
    :func:`best_strategy`). Existing files of the same names are overwritten. Returns
    the path of ``index.html``.
    """
    require_matplotlib()
    if not plans:
        raise ValueError("a report needs at least one plan")
    if set(plans) != set(metrics):
        raise ValueError("plans and metrics must name the same strategies")
    focus = focus or best_strategy(plans, metrics)
    if focus not in plans:
        raise ValueError(f"focus strategy {focus!r} is not among the plans")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)

    charts = [_comparison_chart(out, metrics)]
    charts.append(_peak_heatmap(out, problem, metrics))
    profile_charts = [
        _profile_chart(out, problem, plans[focus], metrics[focus], d, i)
        for i, d in enumerate(_profile_domains(problem, metrics[focus]))
    ]
    slot_maps = [_slot_heatmap(out, problem, plans[name]) for name in plans]

    index = out / "index.html"
    index.write_text(
        _html(problem, plans, metrics, focus, charts, profile_charts, slot_maps), encoding="utf-8"
    )
    return index


# ---------------------------------------------------------------- chart selection


def _profile_domains(problem: Problem, metrics: Metrics) -> list[int]:
    """Root(s), the rows below, and the most loaded leaves (by peak/cap), in tree order."""
    tree = problem.tree
    if tree.size <= 1 + MAX_ROWS // 2:
        return list(range(tree.size))
    leaves = set(tree.leaves.tolist())
    chosen = [d for d in range(tree.size) if tree.depth[d] == 0]
    chosen += [d for d in range(tree.size) if tree.depth[d] == 1 and d not in leaves][:MAX_ROWS]
    ratio = np.array([m.peak_over_cap for m in metrics.domains])
    loaded = sorted(leaves, key=lambda d: (-ratio[d], d))[:TOP_LEAVES]
    chosen += [d for d in loaded if d not in chosen]
    return chosen


class ChartsUnavailable(RuntimeError):
    """A report was asked for where matplotlib is not installed."""


def require_matplotlib() -> None:
    """Raise :class:`ChartsUnavailable`, naming the install command, when matplotlib is
    missing; the CLI calls it when ``--report`` is parsed, before any planning."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ChartsUnavailable(
            f"--report draws charts with matplotlib, which is not installed ({exc}); "
            f"install the report extra: {REPORT_INSTALL}"
        ) from exc


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _unit_norm() -> Normalize:
    from matplotlib.colors import Normalize

    return Normalize(0.0, 1.0)


def _save(fig: Figure, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attaches the Agg canvas; no pyplot, no global backend
    fig.savefig(path, dpi=DPI)


def _hour_ticks(ax: Axes, problem: Problem) -> None:
    """Ticks every 3 hours (or an eighth of the period) labelled as times of day."""
    grid = problem.grid
    hours = grid.period_s / 3600.0
    step = 3.0 if hours == 24 else max(1.0, round(hours / 8))
    ticks = np.arange(0.0, hours + 1e-9, step)
    ax.set_xticks(ticks)
    minutes = [round(h * 60) for h in ticks]
    ax.set_xticklabels([f"{m // 60 % 24:02d}:{m % 60:02d}" for m in minutes])
    ax.set_xlim(0.0, hours)


def _ratio_cmap() -> Colormap:
    """Viridis up to 100% of the cap and a loud red beyond it, so a breach cannot hide."""
    import matplotlib

    return matplotlib.colormaps["viridis"].with_extremes(over="#e3242b")


# ---------------------------------------------------------------- charts


def _comparison_chart(out: Path, metrics: dict[str, Metrics]) -> _Chart:
    names = list(metrics)
    fig = _figure(10.5, 4.0)
    ax_hosted, ax_gain = fig.subplots(1, 2, width_ratios=(1.1, 1))
    hosted = [metrics[n].hosted_total for n in names]
    colors = ["#d62728" if metrics[n].violations else "#4c72b0" for n in names]
    bars = ax_hosted.bar(names, hosted, color=colors)
    ax_hosted.bar_label(bars, padding=2)
    demand = metrics[names[0]].demand_total
    ax_hosted.axhline(demand, color="#333", ls="--", lw=1)
    ax_hosted.annotate(
        f"demand {demand}",
        (0.99, demand),
        xycoords=("axes fraction", "data"),
        ha="right",
        va="bottom",
        fontsize=9,
    )
    ax_hosted.set_ylim(0, max(demand, *hosted) * 1.12 or 1)
    ax_hosted.set_ylabel("replicas hosted")
    ax_hosted.set_title("Replicas hosted (red: predicted violations)")

    width = 0.38
    x = np.arange(len(names))
    for k, base in enumerate(BASELINES):
        values = [
            100.0 * (g if (g := strategy_gains(n, metrics).get(f"vs_{base}")) is not None else 0)
            for n in names
        ]
        bars = ax_gain.bar(x + (k - 0.5) * width, values, width, label=f"vs {base}")
        ax_gain.bar_label(bars, fmt="%+.0f%%", padding=2, fontsize=8)
    ax_gain.axhline(0, color="#333", lw=0.8)
    ax_gain.set_xticks(x, names)
    ax_gain.set_ylabel("more replicas than baseline (%)")
    ax_gain.set_title("Gain over the baselines")
    # Below the axes: inside, it would sit on the first group of bars.
    ax_gain.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=9)
    lo, hi = ax_gain.get_ylim()
    ax_gain.set_ylim(min(lo, 0), hi + 0.1 * (hi - lo))
    _save(fig, out / "strategies.png")
    return _Chart("strategies.png", "Strategies compared: replicas hosted and gains")


def _split_levels(problem: Problem) -> tuple[list[int], list[int]]:
    """Domains with children and leaf domains, each in tree order."""
    leaves = set(problem.tree.leaves.tolist())
    inner = [d for d in range(problem.tree.size) if d not in leaves]
    return inner, sorted(leaves)


def _sparse_labels(indices: list[int], names: Sequence[str]) -> tuple[list[int], list[str]]:
    """At most :data:`LABEL_ALL_DOMAINS` evenly spaced tick positions and their names."""
    every = max(1, -(-len(indices) // LABEL_ALL_DOMAINS))
    positions = list(range(0, len(indices), every))
    return positions, [names[indices[i]] for i in positions]


def _peak_heatmap(out: Path, problem: Problem, metrics: dict[str, Metrics]) -> _Chart:
    """Peak/cap of every domain under every strategy."""
    tree = problem.tree
    names = list(metrics)
    ratio = np.array([[m.peak_over_cap for m in metrics[n].domains] for n in names])  # S × D
    cmap, norm = _ratio_cmap(), _unit_norm()
    if tree.size <= LABEL_ALL_DOMAINS:
        # Domains down the side, one labelled row each, values written in the cells.
        fig = _figure(2.6 + 1.3 * len(names), 1.3 + 0.3 * tree.size)
        ax = fig.subplots()
        image = ax.imshow(ratio.T, cmap=cmap, norm=norm, aspect="auto")
        ax.set_yticks(
            range(tree.size),
            [("  " * int(tree.depth[d])) + tree.names[d] for d in range(tree.size)],
        )
        ax.set_xticks(range(len(names)), names)
        ax.xaxis.tick_top()
        for d in range(tree.size):
            for s in range(len(names)):
                value = ratio[s, d]
                ax.text(
                    s,
                    d,
                    f"{value:.0%}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if value < 0.6 or value > 1.0 else "black",
                )
        fig.colorbar(image, ax=ax, extend="max", label="peak / cap", shrink=0.9)
        ax.set_title("Peak / cap of every domain (red: over the cap)")
    else:
        # Too many domains for a row each: strategies down the side, and two panels
        # along — the labelled upper levels, then every leaf in tree order.
        inner, leaves = _split_levels(problem)
        fig = _figure(12.0, 1.9 + 0.5 * len(names))
        ax_in, ax_leaf = fig.subplots(
            1, 2, sharey=True, width_ratios=(min(4.0, 0.25 * len(inner) + 0.3), 8.0)
        )
        ax_in.imshow(ratio[:, inner], cmap=cmap, norm=norm, aspect="auto")
        ax_in.set_yticks(range(len(names)), names)
        positions, labels = _sparse_labels(inner, tree.names)
        ax_in.set_xticks(positions, labels, rotation=90, fontsize=8)
        ax_in.set_title("upper levels", fontsize=10)
        image = ax_leaf.imshow(
            ratio[:, leaves], cmap=cmap, norm=norm, aspect="auto", interpolation="nearest"
        )
        ax_leaf.set_xticks([])
        ax_leaf.set_xlabel(f"{len(leaves)} leaf domains, in tree order")
        ax_leaf.set_title("leaves", fontsize=10)
        fig.colorbar(image, ax=[ax_in, ax_leaf], extend="max", label="peak / cap", shrink=0.9)
        fig.suptitle("Peak / cap of every domain (red: over the cap)")
    _save(fig, out / "peak_over_cap.png")
    return _Chart("peak_over_cap.png", "Peak over cap across the tree, per strategy")


def _slot_heatmap(out: Path, problem: Problem, plan: Plan) -> _Chart:
    """Load/cap of every domain in every slot of the period, for one plan."""
    tree, grid = problem.tree, problem.grid
    ratio = plan.assignment.load(problem) / tree.caps
    hours = grid.period_s / 3600.0
    cmap, norm = _ratio_cmap(), _unit_norm()
    title = f"{plan.strategy}: load / cap of every domain over the day"

    def draw(ax: Axes, rows: list[int]) -> AxesImage:
        return ax.imshow(
            ratio[rows],
            cmap=cmap,
            norm=norm,
            aspect="auto",
            interpolation="nearest",
            extent=(0.0, hours, len(rows) - 0.5, -0.5),
        )

    if tree.size <= LABEL_ALL_DOMAINS:
        fig = _figure(11.0, max(3.0, 1.3 + 0.22 * tree.size))
        ax = fig.subplots()
        image = draw(ax, list(range(tree.size)))
        ax.set_yticks(range(tree.size), list(tree.names), fontsize=8)
        axes = [ax]
        ax.set_title(title)
    else:
        # Upper levels labelled on top; the leaves, too many to name, as one block below.
        inner, leaves = _split_levels(problem)
        h_inner = min(4.0, 0.5 + 0.17 * len(inner))
        fig = _figure(11.0, h_inner + 5.0)
        ax_in, ax_leaf = fig.subplots(2, 1, sharex=True, height_ratios=(h_inner, 4.2))
        draw(ax_in, inner)
        positions, labels = _sparse_labels(inner, tree.names)
        ax_in.set_yticks(positions, labels, fontsize=8)
        image = draw(ax_leaf, leaves)
        ax_leaf.set_yticks([])
        ax_leaf.set_ylabel(f"{len(leaves)} leaf domains")
        axes = [ax_in, ax_leaf]
        fig.suptitle(title)
    _hour_ticks(axes[-1], problem)
    axes[-1].set_xlabel("time of day")
    fig.colorbar(image, ax=axes, extend="max", label="load / cap", shrink=0.8, aspect=25)
    file = f"heatmap-{_safe(plan.strategy)}.png"
    _save(fig, out / file)
    return _Chart(file, f"{plan.strategy}: load/cap per domain and time of day")


def _profile_chart(
    out: Path, problem: Problem, plan: Plan, metrics: Metrics, domain: int, position: int
) -> _Chart:
    """Idle plus each service's draw under ``domain``, stacked, against its cap."""
    tree, grid = problem.tree, problem.grid
    layers, labels, colors = _profile_layers(problem, plan, domain)

    # Values hold for a whole slot: draw steps from each slot's start, and repeat the
    # last value so the final slot reaches the end of the period.
    step_h = grid.step_s / 3600.0
    edges = np.arange(grid.slots + 1) * step_h

    def stepped(values: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.append(values, values[-1])

    fig = _figure(10.0, 3.9)
    ax = fig.subplots()
    ax.stackplot(
        edges,
        *(stepped(layer) for layer in layers),
        labels=labels,
        colors=colors,
        alpha=0.9,
        lw=0,
        step="post",
    )
    cap_kw = tree.caps[domain] / 1000.0
    ax.step(edges, stepped(cap_kw), where="post", color="#111", lw=2.0, label="cap")
    if problem.headroom > 0:
        ax.step(
            edges,
            stepped(cap_kw * (1 - problem.headroom)),
            where="post",
            color="#111",
            lw=1,
            ls="--",
            label=f"cap − {problem.headroom:.0%} headroom",
        )
    m = metrics.domains[domain]
    total = np.sum(layers, axis=0)
    t_peak = int(np.argmax(total))
    x_peak = (t_peak + 0.5) * step_h
    ax.plot([x_peak], [total[t_peak]], marker="v", color="#d62728", ms=8, zorder=5)
    ax.set_ylim(0, max(float(cap_kw.max()), float(total.max())) * 1.08)
    _hour_ticks(ax, problem)
    ax.set_ylabel("kW")
    # The peak goes in the title: next to the marker it would collide with the cap line.
    ax.set_title(
        f"{tree.names[domain]} — {plan.strategy}: {m.replicas} replicas; "
        f"peak {m.peak_w / 1000:,.1f} kW at {m.peak_slot} (▼), "
        f"worst load/cap {m.peak_over_cap:.0%}",
        fontsize=11,
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    file = f"profile-{position:02d}-{_safe(tree.names[domain])}.png"
    _save(fig, out / file)
    return _Chart(file, f"{tree.names[domain]}: predicted draw by service against the cap")


def _profile_layers(
    problem: Problem, plan: Plan, domain: int
) -> tuple[list[NDArray[np.float64]], list[str], list[str]]:
    """The stacked bands of a profile chart, kW per slot, with their labels and colours:
    node idle, the :data:`STACK_SERVICES` biggest services under ``domain`` and one band
    for the rest."""
    svc = problem.services
    replicas = plan.assignment.by_domain(problem)[:, domain].astype(np.float64)
    parts = replicas[:, None] * svc.profiles / 1000.0  # services × T, kW
    idle_kw = float(problem.idle_by_domain[domain]) / 1000.0
    order = [s for s in np.argsort(-parts.sum(axis=1), kind="stable") if replicas[s] > 0]
    shown = (
        order[:STACK_SERVICES] if len(order) <= STACK_SERVICES + 1 else order[: STACK_SERVICES - 1]
    )
    rest = [s for s in order if s not in shown]
    layers: list[NDArray[np.float64]] = [np.full(problem.grid.slots, idle_kw)]
    labels = ["node idle"]
    colors = ["#c9ccd3"]
    palette = _palette(len(shown))
    for k, s in enumerate(shown):
        layers.append(parts[s])
        labels.append(f"{svc.names[s]} ×{int(replicas[s])}")
        colors.append(palette[k])
    if rest:
        layers.append(parts[rest].sum(axis=0))
        labels.append(f"{len(rest)} other services ×{int(replicas[rest].sum())}")
        colors.append("#8c8c8c")
    return layers, labels, colors


def _palette(n: int) -> list[str]:
    """tab10 without its grey, which the idle and "other services" bands use."""
    import matplotlib

    tab10 = matplotlib.colormaps["tab10"]
    colors = [matplotlib.colors.to_hex(tab10(i)) for i in range(10) if i != 7]
    return [colors[i % len(colors)] for i in range(n)]


# ---------------------------------------------------------------- HTML


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1%}"


def _ratio_class(value: float) -> str:
    return "bad" if value > 1.0 + 1e-9 else "warn" if value >= 0.95 else "ok"


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], row_class: Sequence[str] = ()
) -> str:
    """Cells are trusted HTML; callers escape text that came from the scenario."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_class[i]}"' if i < len(row_class) and row_class[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(chart: _Chart) -> str:
    return (
        f'<figure><img src="{html.escape(chart.file)}" alt="{html.escape(chart.caption)}">'
        f"<figcaption class=muted>{html.escape(chart.caption)}</figcaption></figure>"
    )


def _html(
    problem: Problem,
    plans: dict[str, Plan],
    metrics: dict[str, Metrics],
    focus: str,
    charts: list[_Chart],
    profile_charts: list[_Chart],
    slot_maps: list[_Chart],
) -> str:
    esc = html.escape
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>powercap report — {esc(problem.name)}</title>
<style>{_CSS}</style></head>
<body>
<h1>powercap placement report</h1>
<p class="muted">Scenario <b>{esc(problem.name)}</b>: {esc(_scenario_facts(problem))}</p>

<h2>Strategies</h2>
{_strategy_table(plans, metrics, focus)}
<p class="muted">Gains are more replicas hosted than the baseline. Violations count
domain-slots whose predicted load exceeds the cap; stranded power is the headroom each
leaf domain never uses, summed over leaves.</p>
{"".join(_img(c) for c in charts)}

<h2>Predicted power, {esc(focus)}</h2>
<div class="grid">{"".join(_img(c) for c in profile_charts)}</div>

<h2>Domains, {esc(focus)}</h2>
{_domain_table(problem, metrics[focus])}

<h2>Services</h2>
{_service_table(problem, plans, metrics)}

<h2>Load over the day, every strategy</h2>
{"".join(_img(c) for c in slot_maps)}
</body></html>
"""


def _scenario_facts(problem: Problem) -> str:
    """One plain-text sentence sizing the scenario: domains, nodes, services, slots."""
    tree, fleet, svc, grid = problem.tree, problem.fleet, problem.services, problem.grid
    step_min = grid.step_s // 60
    return (
        f"{tree.size} domains ({len(tree.leaves)} leaves), {fleet.size} nodes "
        f"({int(fleet.gpus.sum())} GPUs), {svc.size} services asking for "
        f"{int(svc.demand.sum())} replicas; {grid.slots} slots of {step_min} min; "
        f"headroom {problem.headroom:.0%}."
    )


def _strategy_table(plans: dict[str, Plan], metrics: dict[str, Metrics], focus: str) -> str:
    """One row per strategy: hosted, gains, violations, solver status; ``focus`` highlighted."""
    esc = html.escape
    rows = []
    for name, plan in plans.items():
        m, stats = metrics[name], plan.stats
        g = strategy_gains(name, metrics)
        rows.append(
            [
                f"<b>{esc(name)}</b>",
                f"{m.hosted_total} / {m.demand_total}",
                pct(g.get("vs_nameplate")),
                pct(g.get("vs_peak-sum")),
                f'<span class="{"bad" if m.violations else "ok"}">{m.violations}</span>',
                f'<span class="{_ratio_class(m.worst_peak_over_cap)}">'
                f"{m.worst_peak_over_cap:.1%}</span>",
                f"{m.stranded_w / 1000:,.1f}",
                f"{m.energy_slack_kwh:,.0f}",
                f"{m.asynchrony:.3f}",
                esc(stats.status),
                "—" if stats.gap is None else f"{stats.gap:.2%}",
                f"{stats.wall_s:.2f}",
            ]
        )
    return _table(
        [
            "strategy",
            "hosted / demand",
            "vs nameplate",
            "vs peak-sum",
            "violations",
            "worst peak/cap",
            "stranded kW",
            "energy slack kWh",
            "asynchrony",
            "solver",
            "gap",
            "time s",
        ],
        rows,
        ["focus" if n == focus else "" for n in plans],
    )


def _domain_table(problem: Problem, metrics: Metrics) -> str:
    """One row per domain of one strategy's ``metrics``, in :func:`domain_order`, indented."""
    esc = html.escape
    domain_rows = [
        [
            "&nbsp;" * 3 * d.level + esc(d.domain),
            str(d.replicas),
            f"{d.peak_w / 1000:,.1f}",
            f"{d.cap_at_peak_w / 1000:,.1f}",
            esc(d.peak_slot),
            f'<span class="{_ratio_class(d.peak_over_cap)}">{d.peak_over_cap:.1%}</span>',
            f"{d.stranded_w / 1000:,.1f}",
            f"{d.asynchrony:.3f}",
        ]
        for d in (metrics.domains[i] for i in domain_order(problem))
    ]
    return _table(
        [
            "domain",
            "replicas",
            "peak kW",
            "cap kW",
            "at",
            "peak/cap",
            "stranded kW",
            "asynchrony",
        ],
        domain_rows,
    )


def _service_table(problem: Problem, plans: dict[str, Plan], metrics: dict[str, Metrics]) -> str:
    """One row per service: its priority, GPUs and power, then replicas hosted per strategy."""
    esc = html.escape
    svc = problem.services
    service_rows = [
        [
            esc(n),
            str(int(svc.priority[s])),
            str(int(svc.gpus[s])),
            f"{svc.peaks[s]:,.0f}",
            f"{svc.nameplate[s]:,.0f}",
            *(f"{metrics[p].hosted[n]} / {int(svc.demand[s])}" for p in plans),
        ]
        for s, n in enumerate(svc.names)
    ]
    return _table(
        ["service", "priority", "GPUs", "peak W", "nameplate W", *(esc(p) for p in plans)],
        service_rows,
    )
